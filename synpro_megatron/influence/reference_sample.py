"""The reference documents the influence score is measured against: a seeded sample stratified by task.

``reference_qa.jsonl`` is sorted by task (the first 400 lines are BoolQ), so "the first n lines" is
one task. ``sample_reference`` takes n documents spread evenly over the tasks (the ``task`` field;
files without one are a single stratum): every task gets n // T documents, the remainder goes to
tasks drawn with the seed, and within a task the documents are drawn with the seed too. The chosen
ids (``id`` field, else ``<file>:<line>``) are returned so they can be recorded with the factors.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import List, Optional


@dataclass
class ReferenceSample:
    texts: List[str]
    ids: List[str]
    tasks: List[str]
    seed: int


def sample_reference(path: Optional[str], field: str = "text", n: int = 64, seed: int = 0) -> ReferenceSample:
    from synpro_megatron.pretrain.data import DEFAULT_REFERENCE, iter_reference_records

    path = path or DEFAULT_REFERENCE
    by_task: dict[str, list] = {}
    for lineno, obj in iter_reference_records(path, field):
        task = str(obj.get("task", ""))
        by_task.setdefault(task, []).append((str(obj.get("id", f"{path}:{lineno}")), obj[field]))
    if not by_task:
        raise ValueError(f"{path}: no reference documents")
    rng = random.Random(seed)
    tasks = sorted(by_task)
    total = sum(len(v) for v in by_task.values())
    n = min(n, total)
    quota = {t: n // len(tasks) for t in tasks}
    for t in rng.sample(tasks, n % len(tasks)):
        quota[t] += 1
    # A task with fewer documents than its quota gives the rest to the others, in task order.
    spare = sum(max(0, quota[t] - len(by_task[t])) for t in tasks)
    for t in tasks:
        quota[t] = min(quota[t], len(by_task[t]))
    for t in tasks:
        extra = min(spare, len(by_task[t]) - quota[t])
        quota[t] += extra
        spare -= extra
    texts, ids, task_of = [], [], []
    for t in tasks:
        for doc_id, text in rng.sample(by_task[t], quota[t]):
            texts.append(text)
            ids.append(doc_id)
            task_of.append(t)
    return ReferenceSample(texts, ids, task_of, seed)
