"""Training and evaluation data for the trainer.

Training samples come from megatron-core datasets (a GPTDataset over the organic prefix, or a
SynProBlendedDataset when a blend schedule is given) read through Megatron's sampler semantics, so
`consumed_samples` alone decides where a resumed run continues. Ranks that need no data (middle
pipeline stages) read none; TP ranks read the same samples themselves (a memory-mapped read is
cheaper than a broadcast at this scale, and keeps the code free of TP-group plumbing).
"""
from __future__ import annotations

import json
import os
from typing import Dict, Iterator, List, Optional

import numpy as np
import torch

from synpro_megatron.data.indexed import check_indexed_dataset
from synpro_megatron.data.sampler import PretrainingSampler
from synpro_megatron.rundir import RunDir

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
DEFAULT_REFERENCE = os.path.join(ASSETS, "reference_qa.jsonl")
DEFAULT_WEB_SAMPLE = os.path.join(ASSETS, "web_sample.jsonl.gz")


def gpt_dataset_config(tokenizer, seq_length: int, seed: int, cache_dir: Optional[str]):
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig

    return GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,  # causal masking is built into the attention kernels
        # An empty blend, filled in per dataset (_with_blend): without one, megatron-core turns the
        # config into a mock one and resets the split to "1,1,1", i.e. a train split of a third of
        # the documents
        blend=([], None),
        split="1,0,0",  # the held-out split lives in its own files (synpro prepare)
        path_to_cache=cache_dir,
        mid_level_dataset_surplus=0.005,
    )


def build_gpt_dataset(prefix: str, num_samples: int, config, needs_data: bool):
    """One GPTDataset over a whole IndexedDataset prefix, built rank-0-first like Megatron's builder."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset

    check_indexed_dataset(prefix)
    cfg = _with_blend(config, prefix)
    return BlendedMegatronDatasetBuilder(GPTDataset, [num_samples, 0, 0], lambda: needs_data, cfg).build()[0]


def _with_blend(config, prefix):
    import dataclasses

    return dataclasses.replace(config, blend=([prefix], None))


def check_inputs(cfg) -> None:
    """Every dataset the run reads, checked (index against data, per file) before anything starts,
    and every --synthetic source drawn by the blend schedule: a clear error naming the file."""
    check_indexed_dataset(cfg.data)
    check_indexed_dataset(cfg.data + "_heldout", "held-out split")
    if not cfg.blend_schedule:
        if cfg.synthetic:
            raise ValueError(f"--synthetic {', '.join(cfg.synthetic)}: synthetic sources need a --blend-schedule "
                             f"that says when to draw them")
        return
    from synpro_megatron.blending.schedule import BlendSchedule

    schedule = BlendSchedule.load(cfg.blend_schedule)
    drawn = [n for n in schedule.sources
             if any(max(p.weights.get(n, 0), (p.end_weights or {}).get(n, 0)) > 0 for p in schedule.phases)]
    for name, prefix in cfg.synthetic.items():
        if name not in drawn:
            raise ValueError(f"--synthetic {name}={prefix}: no phase of {cfg.blend_schedule} draws a source "
                             f"{name!r} (the sources it draws: {', '.join(drawn)})")
        check_indexed_dataset(prefix, f"synthetic source {name!r}:")
        if os.path.getsize(prefix + ".bin") == 0:
            raise ValueError(f"synthetic source {name!r} ({prefix}) has no documents; "
                             f"leave it out of the blend schedule")


def build_train_dataset(cfg, tokenizer, num_samples: int, needs_data: bool):
    seq = cfg.model_config().seq_length
    cache = RunDir(cfg.run_dir).dataset_cache
    config = gpt_dataset_config(tokenizer, seq, cfg.seed, cache)
    check_inputs(cfg)
    if cfg.blend_schedule:
        from synpro_megatron.blending import build_blended_dataset

        prefixes = {"organic": cfg.data, **cfg.synthetic}
        return build_blended_dataset(cfg.blend_schedule, prefixes, num_samples, config, needs_data)
    return build_gpt_dataset(cfg.data, num_samples, config, needs_data)


def collate(samples: List[Dict]) -> Dict[str, torch.Tensor]:
    keys = ("tokens", "labels", "loss_mask", "position_ids")
    out = {k: torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in keys}
    if "dataset_id" in samples[0]:
        out["dataset_id"] = torch.as_tensor([int(s["dataset_id"]) for s in samples])
    return out


def micro_batches(dataset, total_samples: int, consumed: int, micro_batch: int, dp_rank: int,
                  dp_size: int) -> Iterator[Dict[str, torch.Tensor]]:
    sampler = PretrainingSampler(total_samples, consumed, micro_batch, dp_rank, dp_size)
    for idx in sampler:
        yield collate([dataset[i] for i in idx])


# ----- evaluation sets: fixed packed windows, identical on every run and layout -----

def pack_windows(docs: List[List[int]], seq_length: int, max_windows: int) -> List[Dict[str, torch.Tensor]]:
    """Concatenate documents and cut windows of seq_length+1 tokens (inputs + shifted labels)."""
    stream = np.concatenate([np.asarray(d, dtype=np.int64) for d in docs]) if docs else np.zeros(0, np.int64)
    n = min(max_windows, (len(stream) - 1) // seq_length)
    if n <= 0:
        raise ValueError(f"evaluation text too short for one window of {seq_length} tokens")
    windows = []
    for w in range(n):
        chunk = torch.from_numpy(stream[w * seq_length: (w + 1) * seq_length + 1])
        windows.append({
            "tokens": chunk[:-1],
            "labels": chunk[1:],
            "loss_mask": torch.ones(seq_length, dtype=torch.float),
            "position_ids": torch.arange(seq_length),
        })
    return windows


def heldout_windows(prefix: str, seq_length: int, max_windows: int):
    from synpro_megatron.data.indexed import read_documents

    held = prefix + "_heldout"
    check_indexed_dataset(held, "held-out split")
    return pack_windows([d.tolist() for d in read_documents(held)], seq_length, max_windows)


def iter_reference_records(path: Optional[str], field: str = "text"):
    """(line number, record) of a reference JSONL (default: the packaged one); a malformed line or a
    missing text field is an error naming the file and line."""
    path = path or DEFAULT_REFERENCE
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
                raise ValueError(f"{path}:{lineno}: missing text field {field!r}")
            yield lineno, obj


def reference_windows(path: Optional[str], field: str, tokenizer, seq_length: int, max_docs: int,
                      max_windows: int, seed: int = 0):
    """The evaluation's (and the valuation's) reference windows: a seeded sample of max_docs whole
    documents stratified over the reference set's tasks (the same sampler the probe uses), packed into
    windows. Taking the first lines instead would read only the task the file starts with."""
    from synpro_megatron.influence.reference_sample import sample_reference

    sample = sample_reference(path, field, max_docs, seed=seed)
    # Interleave the tasks (one document of each in turn): the windows keep only a prefix of the
    # packed stream, and that prefix must be stratified too.
    by_task: Dict[str, List[str]] = {}
    for text, task in zip(sample.texts, sample.tasks):
        by_task.setdefault(task, []).append(text)
    queues = list(by_task.values())
    texts = [q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)]
    docs = [ids + [tokenizer.eod] for ids in tokenizer.tokenize_batch(texts)]
    return pack_windows(docs, seq_length, max_windows)


def batched(windows: List[Dict[str, torch.Tensor]], micro_batch: int) -> List[Dict[str, torch.Tensor]]:
    n = len(windows) - len(windows) % micro_batch
    return [collate(windows[i:i + micro_batch]) for i in range(0, n, micro_batch)]
