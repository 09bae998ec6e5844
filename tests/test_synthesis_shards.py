"""`synpro synthesize --shard R/N`, as a user launching an array job would run it: shards run by
hand (in any order) merge on shard 0 to the same bytes as one process; bad --shard values get a
clear error. The synthesis loop's own launch (srun over the allocation) is in test_slurm.py."""
import json

import pytest

from synpro_megatron.cli import main
from synpro_megatron.synthesis.sources import PACKAGED_SAMPLE
from tiny_generator import make_tiny_generator


def _synth(run_dir, generator, *extra):
    return main(["synthesize", "--kind", "rephrase", "--run-dir", str(run_dir), "--round", "1",
                 "--generator", generator, "--source-jsonl", str(PACKAGED_SAMPLE), "--limit", "3",
                 "--batch-size", "1", "--max-new-tokens", "8", "--max-source-tokens", "48", "--backend", "hf",
                 *extra])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_shards_by_hand_merge_to_the_bytes_of_one_process(tmp_path):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # an OpenMP team on a busy 2-core machine spins more than it computes
    try:
        _shards_merge_to_one_process(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _shards_merge_to_one_process(tmp_path):
    gen = make_tiny_generator(tmp_path / "gen")
    assert _synth(tmp_path / "one", gen) == 0
    sharded = tmp_path / "sharded"
    # shard 2 and 1 first (they leave their done markers), shard 0 last merges
    for shard in ("2/3", "1/3"):
        assert _synth(sharded, gen, "--shard", shard) == 0
        assert not (sharded / "synthetic" / "round_1" / "rephrase.bin").exists()  # only shard 0 merges
    assert _synth(sharded, gen, "--shard", "0/3") == 0
    one, merged = (d / "synthetic" / "round_1" for d in (tmp_path / "one", sharded))
    for name in ("rephrase.bin", "rephrase.idx", "rephrase.provenance.jsonl", "rephrase.dropped.jsonl"):
        assert (one / name).read_bytes() == (merged / name).read_bytes(), name
    journals = sorted((sharded / "synthetic").rglob("journal.rank*.jsonl"))
    ids = [json.loads(line)["source_id"] for j in journals for line in j.read_text().splitlines() if line.strip()]
    assert len(journals) == 3 and len(ids) == len(set(ids)) == 3  # every document exactly once


def test_bad_shard_is_a_clear_error(tmp_path, capsys):
    for bad in ("3/3", "1", "a/b"):
        assert _synth(tmp_path, "smollm2", "--shard", bad) == 2
        assert "--shard" in capsys.readouterr().err
    assert _synth(tmp_path, "smollm2", "--shard", "0/2", "--rank", "0") == 2
