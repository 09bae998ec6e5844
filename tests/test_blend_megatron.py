"""The Megatron-LM / Megatron Bridge drop-in (issue 15): one test per defect, on megatron-core's own
GPTDataset / BlendedMegatronDatasetBuilder machinery, with argument namespaces carrying the fields
Megatron-LM's parser sets."""
import argparse
import dataclasses
import json
import os
import shutil
import sys
import types

import numpy
import pytest
import torch
from megatron.core import parallel_state
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
from megatron.core.datasets.utils import Split

from synpro_megatron.blending import BlendSchedule, SynProBlendedDataset, build_blend_indices
from synpro_megatron.blending import megatron_lm
from synpro_megatron.blending.bridge import SynProDatasetProvider
from synpro_megatron.blending.megatron_lm import SynProArgsError
from synpro_megatron.cli import main as synpro_main
from synpro_megatron.data.sampler import PretrainingSampler

SEQ = 16
NULL_VOCAB = 511  # megatron's NullTokenizer(vocab_size=511): vocab_size 512, eod 511
EOD = NULL_VOCAB
RANGES = {"organic": (1, 100), "organic_heldout": (400, 500), "round1": (100, 200), "round2": (200, 300)}
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


def write_docs(prefix, lo, hi, num_docs, seed):
    rng = numpy.random.default_rng(seed)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=numpy.uint16)
    for _ in range(num_docs):
        n = int(rng.integers(4, 40))
        builder.add_document(numpy.append(rng.integers(lo, hi, n), EOD), [n + 1])
    builder.finalize(prefix + ".idx")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """organic as `synpro prepare` leaves it (PREFIX_heldout + meta.json), two synthetic rounds."""
    root = tmp_path_factory.mktemp("data")
    sizes = {"organic": 300, "organic_heldout": 40, "round1": 200, "round2": 150}
    for seed, (name, n) in enumerate(sizes.items()):
        write_docs(str(root / name), *RANGES[name], n, seed)
    (root / "organic.meta.json").write_text(json.dumps(
        {"tokenizer_name": "null", "vocab_size": NULL_VOCAB + 1, "eod": EOD, "num_docs": 300, "heldout_docs": 40}))
    schedule = root / "schedule.json"
    BlendSchedule.from_dict(SCHEDULE).save(schedule)
    return {"root": root, "schedule": str(schedule), **{k: str(root / k) for k in sizes}}


def megatron_args(data, tmp_path, **overrides):
    """A namespace with what Megatron-LM's parser (plus with_synpro_args) sets for the data path."""
    parser = megatron_lm.with_synpro_args()(argparse.ArgumentParser())
    args = parser.parse_args(["--synpro-schedule", data["schedule"]]
                             + [a for k in ("organic", "round1", "round2") for a in ("--synpro-source", f"{k}={data[k]}")])
    upstream = dict(
        seed=1234, seq_length=SEQ, split="969,30,1", data_cache_path=str(tmp_path / "cache"), dataloader_type="single",
        tokenizer_type="NullTokenizer", vocab_size=NULL_VOCAB, tokenizer_model=None, tokenizer_metadata=None,
        reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False,
        create_attention_mask_in_dataloader=False, mid_level_dataset_surplus=0.005, mmap_bin_files=True,
        num_dataset_builder_threads=1, multiple_validation_sets=False, full_validation=False,
        object_storage_cache_path=None, allow_ambiguous_pad_tokens=False, dataloader_fast_cache_load=False,
        per_dataset_sequences_path=None, dataloader_defer_npy_index_mmap=False, context_parallel_size=1,
        data_parallel_size=1, tensor_model_parallel_size=1, pipeline_model_parallel_size=1, sequence_parallel=False,
        hybrid_context_parallel=False, data_path=None, mock_data=False, sft=False, fim_data=False,
        phase_transition_iterations=None, iteration=0, train_samples=TOTAL, train_iters=None, global_batch_size=8,
        mtp_num_layers=None, pipeline_model_parallel_layout=None)
    for key, value in {**upstream, **overrides}.items():
        setattr(args, key, value)
    return args


def source_of(tokens):
    tokens = tokens[tokens != EOD]
    hits = {name for name, (lo, hi) in RANGES.items() if ((tokens >= lo) & (tokens < hi)).all()}
    assert len(hits) == 1
    return hits.pop()


def train_tokens(dataset, indices):
    return numpy.stack([dataset[int(i)]["tokens"].numpy() for i in indices])


# ---------------------------------------------------------------------- 1. tokenizer vs meta.json
def test_1_megatron_tokenizer_must_be_the_one_the_data_was_prepared_with(data, tmp_path):
    provider = megatron_lm.train_valid_test_datasets_provider
    with pytest.raises(SynProArgsError, match=r"vocab_size 1024.*prepared with 'null' \(vocab_size 512\).*--tokenizer-model"):
        provider([TOTAL, 0, 0], args=megatron_args(data, tmp_path, vocab_size=1023))
    with pytest.raises(SynProArgsError, match=r"ends documents with id 600.*--eod-mask-loss"):
        provider([TOTAL, 0, 0], args=megatron_args(data, tmp_path, vocab_size=600, eod_mask_loss=True),
                 tokenizer=types.SimpleNamespace(vocab_size=NULL_VOCAB + 1, eod=600, pad=600,
                                                 unique_identifiers={"class": "x"}))
    train, _, _ = provider([TOTAL, 0, 0], args=megatron_args(data, tmp_path))  # Megatron's own NullTokenizer
    assert train.config.tokenizer.vocab_size == NULL_VOCAB + 1


# ---------------------------------------------------------------------- 2. both Megatron-LM versions
def test_2_extra_args_chain_and_core_0_17_args_without_legacy_tokenizer(data, tmp_path):
    def add_modelopt_args(parser):  # stands in for megatron.post_training.arguments.add_modelopt_args
        parser.add_argument("--export-te-mcore-model", action="store_true")
        return parser

    # Megatron calls extra_args_provider(parser) in pretrain() (<= 0.16) and parse_and_validate_args() (>= 0.17)
    parser = megatron_lm.with_synpro_args(add_modelopt_args)(argparse.ArgumentParser())
    parsed = parser.parse_args(["--export-te-mcore-model", "--synpro-schedule", "s.json"])
    assert parsed.export_te_mcore_model and parsed.synpro_schedule == "s.json"
    # core >= 0.17's parser has no --legacy-tokenizer: the tokenizer comes from megatron.core
    args = megatron_args(data, tmp_path)
    assert not hasattr(args, "legacy_tokenizer")
    train, _, _ = megatron_lm.train_valid_test_datasets_provider([TOTAL, 0, 0], args=args)
    assert type(train.config.tokenizer).__module__.startswith("megatron.core.tokenizers")
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md"), encoding="utf-8").read()
    assert "parse_and_validate_args(" in readme and "with_synpro_args(add_modelopt_args" in readme
    assert "--tokenizer-type HuggingFaceTokenizer --tokenizer-model" in readme


# ---------------------------------------------------------------------- 3. --full-validation
def test_3_full_validation_builds_one_epoch_of_held_out_documents(data, tmp_path):
    args = megatron_args(data, tmp_path, full_validation=True)
    _, valid, test = megatron_lm.train_valid_test_datasets_provider([TOTAL, None, 8], args=args)
    assert isinstance(valid, GPTDataset) and valid.num_samples is None  # one epoch, as Megatron asks
    heldout_tokens = valid.dataset.sequence_lengths.sum()
    assert len(valid) == (heldout_tokens - 1) // SEQ  # every held-out token once (minus the extra token)
    assert {source_of(valid[i]["tokens"].numpy()) for i in range(len(valid))} == {"organic_heldout"}
    assert len(test) >= 8


# ---------------------------------------------------------------------- 4. --phase-transition-iterations
def test_4_phase_transitions_continue_the_uninterrupted_stream(data, tmp_path):
    provider = megatron_lm.train_valid_test_datasets_provider
    full, _, _ = provider([TOTAL, 0, 0], args=megatron_args(data, tmp_path))
    expected = train_tokens(full, range(TOTAL))
    gbs, transitions = 8, [10, 20]  # phases start at samples 0, 80, 160
    # resume at iteration 15 (mid phase 2) and 20 (a phase start), as training.py computes it
    for iteration in (0, 15, 20):
        args = megatron_args(data, tmp_path, phase_transition_iterations=",".join(map(str, transitions)),
                             iteration=iteration, global_batch_size=gbs)
        last = max(t for t in (0, *transitions) if t <= iteration)
        nxt = min([t * gbs for t in transitions if t * gbs > iteration * gbs] + [TOTAL])
        phase_train, _, _ = provider([nxt - last * gbs, 0, 0], args=args)
        consumed_in_phase = (iteration - last) * gbs
        sampler = PretrainingSampler(len(phase_train), consumed_in_phase, 2, 0, 1)
        got = [i for batch in sampler for i in batch]
        assert numpy.array_equal(train_tokens(phase_train, got), expected[[last * gbs + i for i in got]])


# ---------------------------------------------------------------------- 5. MTP ranks
@pytest.fixture
def single_rank_mpu(tmp_path):
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    parallel_state.initialize_model_parallel(1, 1)
    yield
    parallel_state.set_pipeline_model_parallel_world_size(None)
    parallel_state.set_pipeline_model_parallel_rank(None)
    parallel_state.destroy_model_parallel()
    torch.distributed.destroy_process_group()


def test_5_a_middle_pipeline_stage_holding_mtp_layers_reads_data(data, tmp_path, single_rank_mpu):
    # megatron-core's own setters place this rank on the middle stage of PP=3
    parallel_state.set_pipeline_model_parallel_world_size(3)
    parallel_state.set_pipeline_model_parallel_rank(1)
    with_mtp = megatron_args(data, tmp_path, mtp_num_layers=1, pipeline_model_parallel_size=3,
                             pipeline_model_parallel_layout="Et|tm|tL")
    without = megatron_args(data, tmp_path, pipeline_model_parallel_size=3)
    assert megatron_lm.is_dataset_built_on_rank(None, with_mtp) is True
    assert megatron_lm.is_dataset_built_on_rank(None, without) is False
    train, _, _ = megatron_lm.train_valid_test_datasets_provider([TOTAL, 0, 0], args=with_mtp)
    assert isinstance(train, SynProBlendedDataset)
    assert megatron_lm.train_valid_test_datasets_provider([TOTAL, 0, 0], args=without)[0] is None


# ---------------------------------------------------------------------- 6. upstream config fields
def test_6_dataset_config_carries_every_field_core_gpt_dataset_config_from_args_sets(data, tmp_path, monkeypatch):
    sequences = tmp_path / "sequences.json"
    sequences.write_text(json.dumps({data["round1"]: [200, 201]}))
    args = megatron_args(data, tmp_path, dataloader_fast_cache_load=True, dataloader_defer_npy_index_mmap=True,
                         per_dataset_sequences_path=str(sequences), object_storage_cache_path=str(tmp_path / "os"),
                         context_parallel_size=2, tensor_model_parallel_size=2, sequence_parallel=True,
                         data_parallel_size=4, full_validation=True, multiple_validation_sets=True)
    config = megatron_lm.gpt_dataset_config_from_args(args, [data["organic"]], [data["organic_heldout"]])
    assert (config.fast_cache_load, config.defer_npy_index_mmap) == (True, True)
    assert config.sequences_per_dataset == {data["round1"]: [200, 201]}
    assert config.object_storage_cache_path == str(tmp_path / "os")
    assert (config.context_parallel_size, config.sequence_parallel_size, config.data_parallel_size) == (2, 2, 4)
    assert (config.full_validation, config.multiple_validation_sets, config.mock) == (True, True, False)
    # --dataloader-inter-document-masking (core >= 0.17): the GPTDataset then emits cu_seqlens/max_seqlen
    args = megatron_args(data, tmp_path, dataloader_inter_document_masking=True)
    if "inter_document_masking" in {f.name for f in dataclasses.fields(GPTDatasetConfig)}:
        config = megatron_lm.gpt_dataset_config_from_args(args, [data["organic"]], [data["organic_heldout"]])
        assert config.inter_document_masking is True
    else:
        with pytest.raises(SynProArgsError, match=r"no \['inter_document_masking'\].*newer megatron-core"):
            megatron_lm.gpt_dataset_config_from_args(args, [data["organic"]], [data["organic_heldout"]])

    # Under pretrain_gpt.py its own helper builds the config; we replace only the data fields.
    def core_gpt_dataset_config_from_args(a):  # shaped like upstream's: no --data-path -> a mock config
        return GPTDatasetConfig(random_seed=a.seed, sequence_length=a.seq_length, split="1,1,1",
                                tokenizer=megatron_lm.build_megatron_tokenizer(a), reset_position_ids=True,
                                reset_attention_mask=False, eod_mask_loss=False, allow_ambiguous_pad_tokens=True)

    monkeypatch.setattr(sys.modules["__main__"], "core_gpt_dataset_config_from_args",
                        core_gpt_dataset_config_from_args, raising=False)
    config = megatron_lm.gpt_dataset_config_from_args(megatron_args(data, tmp_path), [data["organic"]], [])
    assert config.reset_position_ids and config.allow_ambiguous_pad_tokens and not config.mock
    assert config.blend is None and config.blend_per_split[Split.train.value] == ([data["organic"]], None)


# ---------------------------------------------------------------------- 7. object storage prefixes
class LocalS3:
    """boto3's S3 client over a local folder (bucket = folder name): what megatron-core calls."""

    def __init__(self, root):
        self.root = root

    def download_file(self, Bucket, Key, Filename):
        shutil.copyfile(os.path.join(self.root, Bucket, Key), Filename)

    def get_object(self, Bucket, Key, Range):
        lo, hi = (int(v) for v in Range.removeprefix("bytes=").split("-"))
        with open(os.path.join(self.root, Bucket, Key), "rb") as f:
            f.seek(lo)
            payload = f.read(hi - lo + 1)
        return {"Body": types.SimpleNamespace(read=lambda: payload)}

    def close(self):
        pass


def test_7_object_storage_prefixes_reach_megatron(data, tmp_path, monkeypatch):
    from megatron.core.datasets import indexed_dataset, object_storage_utils

    bucket = tmp_path / "s3" / "bucket"
    bucket.mkdir(parents=True)
    for name in ("organic", "round1", "round2"):
        for suffix in (".bin", ".idx"):
            shutil.copyfile(data[name] + suffix, bucket / (name + suffix))
    fake_boto3 = types.SimpleNamespace(client=lambda service: LocalS3(str(tmp_path / "s3")))
    monkeypatch.setattr(object_storage_utils, "boto3", fake_boto3, raising=False)
    monkeypatch.setattr(indexed_dataset, "boto3", fake_boto3, raising=False)
    args = megatron_args(data, tmp_path, object_storage_cache_path=str(tmp_path / "idx_cache"), mmap_bin_files=False,
                         synpro_heldout=data["organic_heldout"])
    args.synpro_source = [f"{k}=s3://bucket/{k}" for k in ("organic", "round1", "round2")]
    train, valid, _ = megatron_lm.train_valid_test_datasets_provider([TOTAL, 8, 0], args=args)
    local, _, _ = megatron_lm.train_valid_test_datasets_provider(
        [TOTAL, 8, 0], args=megatron_args(data, tmp_path / "local"))
    assert numpy.array_equal(train_tokens(train, range(0, TOTAL, 7)), train_tokens(local, range(0, TOTAL, 7)))
    assert source_of(valid[0]["tokens"].numpy()) == "organic_heldout"


# ---------------------------------------------------------------------- 8. conflicting flags
@pytest.mark.parametrize("flag,value", [("data_path", ["1.0", "/d/x"]), ("mock_data", True), ("sft", True),
                                        ("fim_data", True), ("train_data_path", ["/d/x"])])
def test_8_megatron_data_flags_with_synpro_flags_are_an_error(data, tmp_path, flag, value):
    args = megatron_args(data, tmp_path, **{flag: value})
    option = "--" + flag.replace("_", "-")
    with pytest.raises(SynProArgsError, match=f"{option} given with --synpro-schedule"):
        megatron_lm.train_valid_test_datasets_provider([TOTAL, 0, 0], args=args)


# ---------------------------------------------------------------------- 9. held-out split
def test_9_synthetic_sources_train_on_all_documents_and_validation_reads_the_heldout_files(data, tmp_path):
    args = megatron_args(data, tmp_path)  # Megatron's default --split 969,30,1
    train, valid, test = megatron_lm.train_valid_test_datasets_provider([TOTAL, 16, 8], args=args)
    docs = {name: len(child.dataset.document_indices) - 1 for name, child in zip(train.sources, train.datasets)}
    for name, child in zip(train.sources, train.datasets):
        assert len(child.indices) == docs[name], name  # every document, none withheld
    for held in (valid, test):
        assert held.dataset.path_prefix == data["organic_heldout"]
        assert {source_of(held[i]["tokens"].numpy()) for i in range(len(held))} == {"organic_heldout"}
    # no prepared held-out file: the organic --split part validates, synthetic still trains on all
    args = megatron_args(data, tmp_path, split="80,20,0")
    shutil.copyfile(data["organic"] + ".bin", tmp_path / "bare.bin")
    shutil.copyfile(data["organic"] + ".idx", tmp_path / "bare.idx")
    args.synpro_source[0] = f"organic={tmp_path / 'bare'}"
    train, valid, test = megatron_lm.train_valid_test_datasets_provider([TOTAL, 16, 0], args=args)
    assert len(train.datasets[0].indices) == 240 and len(train.datasets[1].indices) == 200
    assert valid.indices[0] == 240 and test is None


# ---------------------------------------------------------------------- Megatron Bridge
@dataclasses.dataclass(frozen=True)
class DatasetBuildContext:
    """Bridge's megatron.bridge.data.base.DatasetBuildContext (Bridge does not install here)."""

    train_samples: int
    valid_samples: int
    test_samples: int
    tokenizer: object = None
    pg_collection: object = None


def test_bridge_provider_builds_as_bridge_calls_it(data, tmp_path):
    from megatron.core.tokenizers import MegatronTokenizer

    provider = SynProDatasetProvider(
        schedule=data["schedule"], sources={k: data[k] for k in ("organic", "round1", "round2")},
        sequence_length=SEQ, path_to_cache=str(tmp_path / "cache"), create_attention_mask=False, num_workers=0)
    provider.finalize()  # ConfigContainer.validate() does this
    assert provider.dataloader_type == "single" and provider.persistent_workers is False
    tokenizer = MegatronTokenizer.from_pretrained(metadata_path={"library": "null"}, vocab_size=NULL_VOCAB)
    # get_dataset_provider's protocol_adapter: the sample counts, tokenizer and process groups of setup()
    context = DatasetBuildContext(train_samples=TOTAL, valid_samples=16, test_samples=8, tokenizer=tokenizer)
    train, valid, test = provider.build_datasets(context)
    assert train.dataset_index.tobytes() == build_blend_indices(BlendSchedule.from_dict(SCHEDULE), TOTAL)[0].tobytes()
    assert source_of(valid[0]["tokens"].numpy()) == "organic_heldout" and len(test) >= 8
    wrong = MegatronTokenizer.from_pretrained(metadata_path={"library": "null"}, vocab_size=2047)
    with pytest.raises(SynProArgsError, match="vocab_size 2048"):
        provider.build_datasets(dataclasses.replace(context, tokenizer=wrong))
    with pytest.raises(SynProArgsError, match="single"):
        SynProDatasetProvider(schedule=data["schedule"], sources={}, sequence_length=SEQ, dataloader_type="cyclic")


# ---------------------------------------------------------------------- synpro blend check-megatron
def test_check_megatron_cli(data, tmp_path, capsys):
    base = ["blend", "check-megatron", "--schedule", data["schedule"], "--num-samples", "200", "--window", "50"] \
        + [a for k in ("organic", "round1", "round2") for a in ("--synpro-source", f"{k}={data[k]}")]
    megatron = ["--tokenizer-type", "NullTokenizer", "--vocab-size", str(NULL_VOCAB), "--seq-length", str(SEQ),
                "--dataloader-type", "single", "--num-layers", "2"]
    assert synpro_main(base + megatron) == 0
    out = capsys.readouterr().out
    assert "not checked" in out and "--num-layers" in out
    assert "150-199" in out and "ok" in out.splitlines()[-1]
    # the first N samples' realized mix is the one the provider builds
    row = next(line for line in out.splitlines() if line.strip().startswith("150-199"))
    expected = build_blend_indices(BlendSchedule.from_dict(SCHEDULE), 200)[0][150:200]
    assert f"{(expected == 1).mean() * 100:6.2f}%" in row
    # without tokenizer flags (pretrain_gpt.py's GPT-2 default), a conflicting flag and a wrong vocab
    assert synpro_main(base + ["--seq-length", "16", "--mock-data"]) == 2
    out = capsys.readouterr().out
    assert "--mock-data given with --synpro-schedule" in out and "GPT2BPETokenizer" in out
    assert synpro_main(base + megatron[:2] + ["--vocab-size", "1023", "--seq-length", "16"]) == 2
    assert "vocab_size 1024" in capsys.readouterr().out


@pytest.mark.slow  # loads the Hugging Face tokenizer (prepare + Megatron's HuggingFaceTokenizer)
def test_readme_launch_line_tokenizer_flags_pass_the_check_on_prepared_data(tmp_path, capsys):
    """`synpro prepare` output + the README's --tokenizer-type HuggingFaceTokenizer --tokenizer-model DIR."""
    from synpro_megatron.data.tokenizer import resolve_tokenizer_path

    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": f"Document {i} talks about topic {i % 7} "
                                          "at some length, with words enough for a sample. " * 3}) + "\n"
                              for i in range(120)))
    for name in ("organic", "round1"):
        assert synpro_main(["prepare", "--input", str(corpus), "--output", str(tmp_path / name), "--workers", "1",
                            "--held-out", "0.1"]) == 0
    schedule = tmp_path / "schedule.json"
    schedule.write_text(json.dumps({"sources": ["organic", "round1"], "phases": [
        {"start": 0, "weights": {"organic": 1}}, {"start": 20, "weights": {"organic": 0.5, "round1": 0.5}}]}))
    base = ["blend", "check-megatron", "--schedule", str(schedule), "--num-samples", "40", "--window", "20",
            "--synpro-source", f"organic={tmp_path / 'organic'}", "--synpro-source", f"round1={tmp_path / 'round1'}",
            "--seq-length", "32", "--dataloader-type", "single"]
    capsys.readouterr()
    assert synpro_main(base + ["--tokenizer-type", "HuggingFaceTokenizer",
                               "--tokenizer-model", resolve_tokenizer_path(None)]) == 0
    out = capsys.readouterr().out
    assert "valid: " in out and "organic_heldout" in out and out.splitlines()[-1] == "ok"
    assert synpro_main(base) == 2  # pretrain_gpt.py's default GPT-2 tokenizer
    assert "--tokenizer-type HuggingFaceTokenizer --tokenizer-model" in capsys.readouterr().out
