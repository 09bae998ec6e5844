"""SynProBlendedDataset over real megatron-core GPTDatasets: resume, cache, sizing, Megatron-LM glue."""
import argparse
import dataclasses
import importlib.util
import os

import numpy
import pytest
import torch
from megatron.core.datasets.blended_dataset import BlendedDataset
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
from megatron.core.datasets.utils import Split

from synpro_megatron.blending import (
    BlendSchedule,
    SynProBlendedDataset,
    build_blend_indices,
    build_blended_dataset,
    build_source_datasets,
    samples_per_source,
)
from synpro_megatron.blending import dataset as dataset_module
from synpro_megatron.blending import megatron_lm
from synpro_megatron.data.sampler import PretrainingSampler

SEQ = 16
EOD = 0
# Each source writes tokens from its own range, so a sample's tokens tell which source it came from.
TOKEN_RANGES = {"organic": (1, 100), "round1": (100, 200), "round2": (200, 300), "round3": (300, 400)}


class ToyTokenizer:
    """The attributes GPTDataset / GPTDatasetConfig read from a tokenizer."""

    vocab_size = 512
    eod = EOD
    pad = 511
    unique_identifiers = {"class": "ToyTokenizer", "vocab_size": 512}


def write_corpus(prefix, name, num_docs, seed):
    rng = numpy.random.default_rng(seed)
    lo, hi = TOKEN_RANGES[name]
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=numpy.uint16)
    for _ in range(num_docs):
        n = int(rng.integers(4, 40))
        builder.add_document(numpy.append(rng.integers(lo, hi, n), EOD), [n + 1])
    builder.finalize(prefix + ".idx")
    return prefix


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpora")
    sizes = {"organic": 300, "round1": 200, "round2": 150, "round3": 100}
    return {name: write_corpus(str(root / name), name, n, seed) for seed, (name, n) in enumerate(sizes.items())}


def make_config(cache, split="100,0,0"):
    return GPTDatasetConfig(
        random_seed=1234,
        sequence_length=SEQ,
        blend=(["unused"], None),  # not mock: honours `split`
        split=split,
        path_to_cache=str(cache),
        tokenizer=ToyTokenizer(),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
    )


# organic only, then a ramp blending in two synthetic rounds, then constant
SCHEDULE = {
    "sources": ["organic", "round1", "round2"],
    "phases": [
        {"start": 0, "weights": {"organic": 1}},
        {"start": 64, "weights": {"organic": 0.8, "round1": 0.2},
         "end_weights": {"organic": 0.4, "round1": 0.4, "round2": 0.2}},
        {"start": 192, "weights": {"organic": 0.5, "round1": 0.25, "round2": 0.25}},
    ],
}
TOTAL = 256


def source_of(tokens):
    """Which source wrote these tokens (all non-EOD tokens of a sample share one range)."""
    tokens = tokens[tokens != EOD]
    hits = {name for name, (lo, hi) in TOKEN_RANGES.items() if ((tokens >= lo) & (tokens < hi)).all()}
    assert len(hits) == 1
    return hits.pop()


def stream(dataset, total, consumed, dp_size=2, micro_batch=2):
    """Per DP rank: the (global indices, tokens, dataset_id) of every micro-batch, via a DataLoader."""
    out = {}
    for rank in range(dp_size):
        sampler = PretrainingSampler(total, consumed, micro_batch, rank, dp_size)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=0)
        batches = list(zip(iter(sampler), loader))
        out[rank] = [(idx, batch["tokens"], batch["dataset_id"]) for idx, batch in batches]
    return out


def test_resume_mid_ramp_reproduces_the_stream_with_dp2(corpora, tmp_path):
    schedule = BlendSchedule.from_dict(SCHEDULE)
    prefixes = {k: corpora[k] for k in schedule.sources}
    full = build_blended_dataset(schedule, prefixes, TOTAL, make_config(tmp_path / "a"))
    reference = stream(full, TOTAL, 0)

    # every sample's tokens come from the source dataset_index names
    for rank in reference:
        for _, tokens, ids in reference[rank]:
            for row, k in zip(tokens, ids.tolist()):
                assert source_of(row) == schedule.sources[k]

    consumed = 128  # inside the 64..192 ramp, a multiple of micro_batch * dp
    for cache in (tmp_path / "a", tmp_path / "b"):  # rebuilt from the cache, and from scratch
        rebuilt = build_blended_dataset(BlendSchedule.from_dict(SCHEDULE), prefixes, TOTAL, make_config(cache))
        resumed = stream(rebuilt, TOTAL, consumed)
        for rank in (0, 1):
            tail = [b for b in reference[rank] if b[0][0] >= consumed]
            assert len(tail) == len(resumed[rank]) > 0
            for (idx_a, tok_a, ids_a), (idx_b, tok_b, ids_b) in zip(tail, resumed[rank]):
                assert idx_a == idx_b
                assert torch.equal(tok_a, tok_b) and torch.equal(ids_a, ids_b)


def test_resume_after_extension_keeps_samples_before_the_new_phase(corpora, tmp_path):
    schedule = BlendSchedule.from_dict(SCHEDULE)
    config = make_config(tmp_path)
    reference = stream(build_blended_dataset(schedule, corpora, TOTAL, config), TOTAL, 0)

    # a plateau at sample 160 (mid-ramp): round3 joins from 224 on; the run resumes at 160
    extended = schedule.with_phase(224, {"organic": 0.5, "round3": 0.5})
    resumed = stream(build_blended_dataset(extended, corpora, TOTAL, config), TOTAL, 160)
    new_phase_sources = set()
    for rank in (0, 1):
        before = [b for b in reference[rank] if b[0][0] >= 160]
        for (idx_a, tok_a, _), (idx_b, tok_b, ids_b) in zip(before, resumed[rank]):
            assert idx_a == idx_b
            if idx_b[-1] < 224:
                assert torch.equal(tok_a, tok_b)
            else:
                new_phase_sources |= {extended.sources[k] for k in ids_b.tolist()}
    assert new_phase_sources == {"organic", "round3"}


def test_constant_schedule_matches_megatron_blended_dataset(corpora, tmp_path):
    weights = {"organic": 0.6, "round1": 0.3, "round2": 0.1}
    schedule = BlendSchedule.constant(weights)
    config = make_config(tmp_path)
    size = 200
    children = build_source_datasets({k: corpora[k] for k in weights}, samples_per_source(schedule, size), config)
    ours = SynProBlendedDataset(children, schedule, size, config)
    # path_to_cache=None: megatron-core 0.16.1's BlendedDataset calls get_rank() unguarded otherwise
    theirs = BlendedDataset(list(children.values()), list(weights.values()), size,
                            dataclasses.replace(config, path_to_cache=None))
    assert ours.dataset_index.tobytes() == theirs.dataset_index.tobytes()
    assert ours.dataset_sample_index.tobytes() == theirs.dataset_sample_index.tobytes()
    assert len(ours) == len(theirs) == size
    for i in (0, 1, 57, 199):
        a, b = ours[i], theirs[i]
        assert a.keys() == b.keys() and a["dataset_id"] == b["dataset_id"]
        assert all(torch.equal(a[k], b[k]) for k in a if k != "dataset_id")


def test_cache_hit_returns_identical_arrays(corpora, tmp_path, monkeypatch):
    schedule = BlendSchedule.from_dict(SCHEDULE)
    config = make_config(tmp_path)
    first = build_blended_dataset(schedule, corpora, TOTAL, config)
    cached = sorted(p for p in os.listdir(tmp_path) if p.startswith(first.unique_description_hash))
    assert [p.split("-", 2)[2] for p in cached] == ["train-dataset_index.npy", "train-dataset_sample_index.npy",
                                                   "train-description.txt"]
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]

    def no_rebuild(*args, **kwargs):
        raise AssertionError("cache hit expected")

    monkeypatch.setattr(dataset_module, "build_blend_indices", no_rebuild)
    second = build_blended_dataset(schedule, corpora, TOTAL, config)
    assert second.unique_description_hash == first.unique_description_hash
    assert isinstance(second.dataset_index, numpy.memmap)
    assert numpy.asarray(second.dataset_index).tobytes() == first.dataset_index.tobytes()
    assert numpy.asarray(second.dataset_sample_index).tobytes() == first.dataset_sample_index.tobytes()
    # another schedule is another key
    with pytest.raises(AssertionError, match="cache hit expected"):
        build_blended_dataset(schedule.with_phase(200, {"round2": 1}), corpora, TOTAL, config)


def test_overdrawn_child_is_a_clear_error_unless_it_wraps(corpora, tmp_path):
    schedule = BlendSchedule.constant({"organic": 0.5, "round3": 0.5})
    config = make_config(tmp_path)
    size = 600
    children = build_source_datasets({"organic": corpora["organic"], "round3": corpora["round3"]},
                                     {"organic": 400, "round3": 1}, config)
    small = len(children["round3"])  # one epoch of round3 (~140 samples) < 300 needed
    assert small < size // 2
    with pytest.raises(IndexError, match=r"300 samples from source 'round3'.*only %d" % small):
        SynProBlendedDataset(children, schedule, size, config)
    wrapped = SynProBlendedDataset(children, schedule, size, config, wrap=["round3"])
    synthetic = wrapped.dataset_index == 1
    assert numpy.array_equal(wrapped.dataset_sample_index[synthetic], numpy.arange(300) % small)
    assert wrapped[size - 1]["tokens"].shape == (SEQ,)


def test_children_are_sized_from_the_cumulative_target(corpora, tmp_path):
    schedule = BlendSchedule.from_dict(SCHEDULE)
    sizes = samples_per_source(schedule, TOTAL, surplus=0.0)
    target = schedule.target_counts(TOTAL)
    counts = numpy.bincount(build_blend_indices(schedule, TOTAL)[0], minlength=3)
    for k, name in enumerate(schedule.sources):
        assert sizes[name] >= counts[k] and sizes[name] == int(numpy.ceil(target[name])) + 2
    with pytest.raises(FileNotFoundError, match="round1"):
        build_source_datasets({"round1": str(tmp_path / "nope")}, {"round1": 5}, make_config(tmp_path))


# ---------------------------------------------------------------------- Megatron-LM glue
def megatron_args(tmp_path, corpora, **overrides):
    schedule_path = tmp_path / "schedule.yaml"
    BlendSchedule.from_dict(SCHEDULE).save(schedule_path)
    parser = megatron_lm.add_synpro_args(argparse.ArgumentParser())
    args = parser.parse_args(["--synpro-schedule", str(schedule_path)]
                             + [a for k in ("organic", "round1", "round2") for a in ("--synpro-source", f"{k}={corpora[k]}")])
    # the Megatron-LM arguments the provider reads
    megatron = dict(seed=1234, seq_length=SEQ, split="80,20,0", data_cache_path=str(tmp_path / "cache"),
                    dataloader_type="single", reset_position_ids=False, reset_attention_mask=False,
                    eod_mask_loss=False, create_attention_mask_in_dataloader=False, mid_level_dataset_surplus=0.005)
    for key, value in {**megatron, **overrides}.items():
        setattr(args, key, value)
    return args


def test_megatron_lm_provider_with_args_namespace(corpora, tmp_path):
    provider = megatron_lm.train_valid_test_datasets_provider
    assert provider.is_distributed is True
    args = megatron_args(tmp_path, corpora)
    train, valid, test = provider([TOTAL, 32, 0], None, args=args, tokenizer=ToyTokenizer())
    assert isinstance(train, SynProBlendedDataset) and len(train) == TOTAL
    assert train.split == Split.train
    expected = build_blend_indices(BlendSchedule.from_dict(SCHEDULE), TOTAL)
    assert train.dataset_index.tobytes() == expected[0].tobytes()
    assert isinstance(valid, GPTDataset) and valid.index_split == Split.valid and len(valid) >= 32
    assert source_of(valid[0]["tokens"].numpy()) == "organic"  # held-out organic documents
    assert test is None


def test_megatron_lm_provider_rejects_bad_setups(corpora, tmp_path):
    provider = megatron_lm.train_valid_test_datasets_provider
    with pytest.raises(ValueError, match="dataloader-type single"):
        provider([8, 0, 0], args=megatron_args(tmp_path, corpora, dataloader_type="cyclic"), tokenizer=ToyTokenizer())
    args = megatron_args(tmp_path, corpora)
    args.synpro_source = [f"organic={corpora['organic']}"]
    with pytest.raises(ValueError, match=r"\['round1', 'round2'\] have no --synpro-source"):
        provider([8, 0, 0], args=args, tokenizer=ToyTokenizer())
    with pytest.raises(ValueError, match="NAME=PREFIX"):
        megatron_lm.parse_sources(["organic"])
    if importlib.util.find_spec("megatron.training") is None:  # megatron-core 0.16.1: no megatron.training
        with pytest.raises(RuntimeError, match="megatron.training"):
            provider([8, 0, 0])


# ---------------------------------------------------------------------- torch.distributed
def _distributed_worker(rank, world_size, init_file, corpora, cache, out_dir):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        dataset = build_blended_dataset(BlendSchedule.from_dict(SCHEDULE), corpora, TOTAL, make_config(cache))
        numpy.save(os.path.join(out_dir, f"rank{rank}.npy"), numpy.asarray(dataset.dataset_sample_index))
        with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
            f.write("loaded" if isinstance(dataset.dataset_index, numpy.memmap) else "built")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_rank0_builds_then_other_ranks_load(corpora, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    torch.multiprocessing.spawn(_distributed_worker, nprocs=2, join=True,
                                args=(2, str(tmp_path / "init"), corpora, str(tmp_path / "cache"), str(out)))
    assert (out / "rank0.txt").read_text() == "built"
    assert (out / "rank1.txt").read_text() == "loaded"
    assert numpy.load(out / "rank0.npy").tobytes() == numpy.load(out / "rank1.npy").tobytes()
