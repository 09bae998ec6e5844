"""The one place for durable file writes: atomic writes and tolerant JSONL reading.

Every small file a stage owns (state.json, blend schedules, config snapshots, synthesis
journals/manifests/provenance, pretrain_config.json) is written to a temporary name in the same
directory, fsync'ed, then renamed over the target, so a crash leaves either the old or the new
file, never half of one. Appends (journals, logs) go out in one write, flushed and fsync'ed. SYNPRO_FSYNC=0 skips the fsync (the rename
stays atomic against process crashes, not against power loss): for tests and scratch runs.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Iterable, List


def atomic_write_text(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            if fsync_enabled():
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def fsync_enabled() -> bool:
    return os.environ.get("SYNPRO_FSYNC", "1") != "0"


def jsonl_text(records: Iterable[dict], sort_keys: bool = True) -> str:
    return "".join(json.dumps(r, sort_keys=sort_keys, ensure_ascii=False) + "\n" for r in records)


def append_jsonl(path: str, records: Iterable[dict], sort_keys: bool = True) -> None:
    """Append records; one write call, flushed (and fsync'ed) before returning, so a killed
    writer leaves at most one torn last line (which `read_jsonl` skips)."""
    text = jsonl_text(records, sort_keys)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        if fsync_enabled():
            os.fsync(f.fileno())


def atomic_write_json(path: str, obj: Any, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def atomic_write_jsonl(path: str, records: Iterable[dict], sort_keys: bool = True) -> None:
    atomic_write_text(path, jsonl_text(records, sort_keys))


def truncate_torn_tail(path: str) -> int:
    """Cut a last line without its newline (its writer was killed mid-append); returns the bytes
    kept. Only the file's own writer may do this (another process may be appending)."""
    with open(path, "rb") as f:
        data = f.read()
    good = data.rfind(b"\n") + 1
    if good < len(data):
        with open(path, "r+b") as f:
            f.truncate(good)
            f.flush()
            if fsync_enabled():
                os.fsync(f.fileno())
    return good


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None


def read_jsonl(path: str, tolerate_torn_tail: bool = True) -> List[dict]:
    """Records of a JSONL file. A missing file is empty.

    The last line may be torn when its writer was killed mid-write (a trainer preempted while
    appending metrics); that line alone is skipped. A bad line anywhere else is an error naming
    the file and line, because it means the file is not what we think it is.
    """
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    out = []
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if tolerate_torn_tail and i == last:
                break
            raise ValueError(f"{path}:{i + 1}: malformed JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{path}:{i + 1}: expected a JSON object, got {type(rec).__name__}")
        out.append(rec)
    return out


def dir_has_files(path: str) -> bool:
    """True when `path` is a directory holding at least one regular file (at any depth)."""
    if not os.path.isdir(path):
        return False
    for _root, _dirs, files in os.walk(path):
        if files:
            return True
    return False
