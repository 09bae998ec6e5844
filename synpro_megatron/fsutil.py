"""The one place for durable file writes: atomic writes and tolerant JSONL reading.

Every small file a stage owns (state.json, blend schedules, config snapshots, synthesis
journals/manifests/provenance, pretrain_config.json) is written to a temporary name in the same
directory, fsync'ed, then renamed over the target, so a crash leaves either the old or the new
file, never half of one. Appends (journals, logs) go out in one write, flushed and fsync'ed. SYNPRO_FSYNC=0 skips the fsync (the rename
stays atomic against process crashes, not against power loss): for tests and scratch runs.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, List, Tuple


def fsync_enabled() -> bool:
    return os.environ.get("SYNPRO_FSYNC", "1") != "0"


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w") -> Iterator[Any]:
    """A file object for `path` that is written under a temporary name in the same folder and,
    when the block ends without an error, fsync'ed and renamed over `path` (removed otherwise).
    For outputs too large to build in memory first (a round's provenance)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            if fsync_enabled():
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


@contextlib.contextmanager
def atomic_jsonl_writer(path: str, sort_keys: bool = True) -> Iterator[Callable[[dict], None]]:
    """`write(record)` one line at a time; the file appears whole at the end (see atomic_open)."""
    with atomic_open(path) as f:
        yield lambda record: f.write(json.dumps(record, sort_keys=sort_keys, ensure_ascii=False) + "\n")


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


def iter_jsonl(path: str, tolerate_torn_tail: bool = True) -> Iterator[Tuple[int, dict]]:
    """(byte offset, record) of each line of a JSONL file, streamed (a missing file is empty).

    The last line may be torn when its writer was killed mid-write (a trainer preempted while
    appending metrics); that line alone is skipped. A bad line anywhere else is an error naming
    the file and line, because it means the file is not what we think it is.
    """
    if not os.path.exists(path):
        return
    torn = None  # a malformed line: fatal once another non-blank line follows it
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            if torn is not None:
                raise torn
            try:
                rec = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                torn = ValueError(f"{path}:{lineno}: malformed JSON ({getattr(e, 'msg', e)})")
                continue
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            yield start, rec
    if torn is not None and not tolerate_torn_tail:
        raise torn


def read_jsonl_at(path: str, offset: int) -> dict:
    """The record of the line that starts at `offset` (as iter_jsonl reported it)."""
    with open(path, "rb") as f:
        f.seek(offset)
        return json.loads(f.readline())


def read_jsonl(path: str, tolerate_torn_tail: bool = True) -> List[dict]:
    """Records of a JSONL file (see iter_jsonl)."""
    return [rec for _, rec in iter_jsonl(path, tolerate_torn_tail)]


def dir_has_files(path: str) -> bool:
    """True when `path` is a directory holding at least one regular file (at any depth)."""
    if not os.path.isdir(path):
        return False
    for _root, _dirs, files in os.walk(path):
        if files:
            return True
    return False


def cache_root() -> Path:
    """Where converted models (SmolLM2) and trained verifiers live, outside any run directory:
    $SYNPRO_CACHE, else $XDG_CACHE_HOME/synpro, else ~/.cache/synpro."""
    return Path(os.environ.get("SYNPRO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "synpro"))
