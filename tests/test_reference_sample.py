"""The reference set the influence reward, the probe and the trainer's evaluation/valuation read: a
seeded sample stratified over the packaged reference set's tasks (the file is sorted by task, so its
first lines are all BoolQ)."""
import collections
import json

from synpro_megatron.data.tokenizer import load_tokenizer
from synpro_megatron.influence.reference_sample import sample_reference
from synpro_megatron.pretrain import data as pdata


def _tasks():
    with open(pdata.DEFAULT_REFERENCE, encoding="utf-8") as f:
        return [json.loads(line)["task"] for line in f if line.strip()]


def test_sample_is_stratified_and_seeded():
    tasks = sorted(set(_tasks()))
    assert len(tasks) > 3 and _tasks()[0] == _tasks()[63]  # the file starts with one task
    a = sample_reference(None, n=64, seed=0)
    counts = collections.Counter(a.tasks)
    assert set(counts) == set(tasks)
    assert max(counts.values()) - min(counts.values()) <= 1
    assert sample_reference(None, n=64, seed=0).ids == a.ids
    assert sample_reference(None, n=64, seed=1).ids != a.ids


def test_trainer_reference_windows_cover_every_task_in_their_prefix():
    """The evaluation keeps only the first eval_iters*micro_batch windows: those must already mix the
    tasks, not read the first task of the sample."""
    tok = load_tokenizer()
    windows = pdata.reference_windows(None, "text", tok, 128, 256, 8, seed=0)
    assert len(windows) == 8
    text = tok.detokenize(sum((w["tokens"].tolist() for w in windows), []))
    sample = sample_reference(None, n=256, seed=0)
    seen = {task for doc, task in zip(sample.texts, sample.tasks) if doc[:40] in text}
    assert len(seen) >= 4, seen
