"""`synpro prepare`: round trip on the packaged web sample, every bad-input error, atomicity."""
import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from synpro_megatron.data.indexed import read_documents
from synpro_megatron.data.prepare import CorpusError, PrepareConfig, prepare
from synpro_megatron.data.tokenizer import load_tokenizer
from synpro_megatron.pretrain.data import DEFAULT_WEB_SAMPLE


def _web_docs(n):
    with gzip.open(DEFAULT_WEB_SAMPLE, "rt", encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(n), f)]


def _write_jsonl(path, lines):
    with open(path, "wb") as f:
        for line in lines:
            f.write(line if isinstance(line, bytes) else (line + "\n").encode("utf-8"))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "organic"
    cfg = PrepareConfig(input=DEFAULT_WEB_SAMPLE, output=str(out), limit=120, held_out=0.1, workers=2)
    return cfg, prepare(cfg)


def test_round_trip_text_and_ids(prepared):
    cfg, meta = prepared
    tok = load_tokenizer()
    source = {d["id"]: d["text"] for d in _web_docs(120)}
    for prefix in (cfg.output, cfg.output + "_heldout"):
        ids = json.load(open(prefix + ".docids.json"))
        docs = list(read_documents(prefix))
        assert len(ids) == len(docs) > 0
        for doc_id, tokens in zip(ids, docs):
            assert tokens[-1] == tok.eod, "EOD appended to every document"
            assert tok.detokenize(tokens[:-1]) == source[doc_id]
    assert meta["num_docs"] + meta["heldout_docs"] == 120
    assert meta["heldout_docs"] > 0
    assert meta["vocab_size"] == tok.vocab_size


def test_split_is_stable_and_multiprocess_matches_single(prepared, tmp_path):
    cfg, _ = prepared
    single = PrepareConfig(input=cfg.input, output=str(tmp_path / "one"), limit=120, held_out=0.1, workers=1)
    prepare(single)
    for suffix in (".bin", ".idx", ".docids.json", "_heldout.bin", "_heldout.docids.json"):
        assert open(cfg.output + suffix, "rb").read() == open(single.output + suffix, "rb").read(), suffix


BAD_LINES = {
    "malformed": (b'{"id": "a", "text": "good"}\n{"id": "b", "text": \n', 2, "malformed JSON"),
    "missing_text": (b'{"id": "a", "text": "good"}\n{"id": "b", "body": "x"}\n', 2, "missing text field 'text'"),
    "invalid_utf8": (b'{"id": "a", "text": "good"}\n{"id": "b", "text": "caf\xe9"}\n', 2, "invalid UTF-8"),
    "empty_doc": (b'{"id": "a", "text": "good"}\n{"id": "b", "text": "   "}\n', 2, "empty document"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_input_names_file_and_line(tmp_path, case):
    content, line, message = BAD_LINES[case]
    src = tmp_path / "bad.jsonl"
    src.write_bytes(content + b'{"id": "c", "text": "also good"}\n')
    out = tmp_path / "out"
    with pytest.raises(CorpusError) as err:
        prepare(PrepareConfig(input=str(src), output=str(out), held_out=0.0))
    assert err.value.line == line and err.value.path == str(src)
    assert message in str(err.value) and f"bad.jsonl:{line}" in str(err.value)
    assert not list(tmp_path.glob("out*")), "a failed run leaves nothing under the output name"

    meta = prepare(PrepareConfig(input=str(src), output=str(out), held_out=0.0, on_error="skip"))
    assert meta["num_docs"] == 2 and len(meta["skipped"]) == 1 and f":{line}:" in meta["skipped"][0]


def test_cli_reports_error_and_keeps_previous_output(tmp_path):
    good = tmp_path / "good.jsonl"
    _write_jsonl(good, [json.dumps({"id": i, "text": f"document number {i}"}) for i in range(5)])
    out = tmp_path / "ds"
    prepare(PrepareConfig(input=str(good), output=str(out), held_out=0.0))
    before = {p.name: p.read_bytes() for p in tmp_path.glob("ds*")}

    bad = tmp_path / "bad.jsonl"
    _write_jsonl(bad, [json.dumps({"id": 1, "text": "fine"}), "not json"])
    proc = subprocess.run([sys.executable, "-m", "synpro_megatron.cli", "prepare", "--input", str(bad),
                           "--output", str(out), "--workers", "1"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert f"{bad}:2: malformed JSON" in proc.stderr
    after = {p.name: p.read_bytes() for p in tmp_path.glob("ds*")}
    assert after == before, "the earlier complete dataset is untouched"


def test_zstd_input_and_duplicate_ids(tmp_path):
    import zstandard

    lines = [json.dumps({"id": "x", "text": "one"}), json.dumps({"id": "x", "text": "two"})]
    src = tmp_path / "c.jsonl.zst"
    src.write_bytes(zstandard.ZstdCompressor().compress(("\n".join(lines) + "\n").encode()))
    with pytest.raises(CorpusError, match="duplicate document id 'x'"):
        prepare(PrepareConfig(input=str(src), output=str(tmp_path / "z"), held_out=0.0))
    meta = prepare(PrepareConfig(input=str(src), output=str(tmp_path / "z"), held_out=0.0, on_error="skip"))
    assert meta["num_docs"] == 1
    assert np.array_equal(next(read_documents(str(tmp_path / "z")))[:-1], load_tokenizer().tokenize("one"))


def test_interrupted_run_leaves_no_dataset(tmp_path):
    """SIGKILL in the middle of writing: no file appears under the final names."""
    src = tmp_path / "big.jsonl"
    _write_jsonl(src, [json.dumps({"id": i, "text": "word " * 2000}) for i in range(3000)])
    out = tmp_path / "killed"
    code = (
        "import os, signal, synpro_megatron.data.indexed as ix\n"
        "orig = ix.AtomicIndexedDatasetWriter.add_document\n"
        "def add(self, ids):\n"
        "    orig(self, ids)\n"
        "    if self.num_docs == 500: os.kill(os.getpid(), signal.SIGKILL)\n"
        "ix.AtomicIndexedDatasetWriter.add_document = add\n"
        "from synpro_megatron.data.prepare import PrepareConfig, prepare\n"
        f"prepare(PrepareConfig(input={str(src)!r}, output={str(out)!r}, held_out=0.0))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    final = [p for p in tmp_path.iterdir() if p.name.startswith("killed") and ".tmp-" not in p.name]
    assert final == []
    assert any(".tmp-" in p.name for p in tmp_path.iterdir()), "work in progress lived under temporary names"
    assert not os.path.exists(str(out) + ".meta.json")
