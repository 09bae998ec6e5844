"""The per-rank resume journal of a synthesis job.

Each finished batch is appended to RUN_DIR/synthetic/round_K/.work/KIND/journal.rankR.jsonl in
one write followed by fsync. A rerun reads every journal, drops a torn last line (the owning rank
cuts it off its own file), and skips source ids already journaled, so each document is rewritten
exactly once. Outputs that fail the gate are journaled too (as dropped): a rerun does not retry them.
"""
from __future__ import annotations

from pathlib import Path

from synpro_megatron.fsutil import append_jsonl, iter_jsonl, read_jsonl, truncate_torn_tail


def journal_path(work_dir: Path, rank: int) -> Path:
    return Path(work_dir) / f"journal.rank{rank}.jsonl"


def journal_files(work_dir: Path) -> list[Path]:
    return sorted(Path(work_dir).glob("journal.rank*.jsonl"))


def read_journal(path: Path) -> list[dict]:
    """Records of one journal; a torn last line (killed mid-write) is ignored."""
    return read_jsonl(str(path), tolerate_torn_tail=True)


def repair_journal(path: Path) -> None:
    """Cut a torn last line off a journal; only its owning rank may (the others may be appending)."""
    if Path(path).exists():
        truncate_torn_tail(str(path))


def append_journal(path: Path, records: list[dict]) -> None:
    append_jsonl(str(path), records, sort_keys=False)


def iter_journal(path: Path):
    """(byte offset, record) of each complete line, streamed: a round's journals can be larger
    than memory (see fsutil.read_jsonl_at to read one back)."""
    return iter_jsonl(str(path), tolerate_torn_tail=True)


def done_ids(work_dir: Path) -> set:
    """Source ids any rank has journaled."""
    return {r["source_id"] for path in journal_files(work_dir) for _, r in iter_journal(path)}
