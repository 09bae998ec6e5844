"""`synpro prepare`: JSONL corpus -> Megatron IndexedDataset + document-id table + held-out split.

Outputs for `--output PREFIX`:
  PREFIX.bin / PREFIX.idx                  training documents (EOD appended to each)
  PREFIX_heldout.bin / PREFIX_heldout.idx  held-out documents, same format
  PREFIX.docids.json / PREFIX_heldout.docids.json   document index -> input id
  PREFIX.meta.json                         what was done (written last: its presence means complete)

Every output is written under a temporary name and renamed at the end, so an interrupted run
leaves nothing under the final names.
"""
from __future__ import annotations

import gzip
import hashlib
import zlib
import io
import json
import os
import sys
from dataclasses import asdict, dataclass
from typing import Iterator, List, Optional, Tuple

from synpro_megatron.data.indexed import AtomicIndexedDatasetWriter
from synpro_megatron.errors import remove_stale_temp_files
from synpro_megatron.progress import progress


class CorpusError(ValueError):
    """A bad input record, reported with file and line number."""

    def __init__(self, path: str, line: int, message: str):
        super().__init__(f"{path}:{line}: {message}")
        self.path, self.line, self.message = path, line, message

    def __reduce__(self):
        # pickled into pool workers (an error raised while pool.imap reads its input): the default
        # pickling calls __init__ with the one formatted string and the worker dies, hanging imap
        return (type(self), (self.path, self.line, self.message))


@dataclass
class PrepareConfig:
    input: str
    output: str
    tokenizer: Optional[str] = None
    text_field: str = "text"
    id_field: str = "id"
    held_out: float = 0.02
    on_error: str = "fail"  # fail | skip
    workers: int = 1
    seed: int = 1234
    limit: Optional[int] = None
    train_tokenizer: Optional[int] = None  # vocab size: train a BPE tokenizer on the input (PREFIX.tokenizer/)


@dataclass
class Record:
    line: int
    doc_id: str
    text: str


def _zstd_chunks(path: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Decompressed bytes of a (multi-frame) .zst file; raises EOFError when it ends inside a frame
    (zstandard's stream reader just stops there, so a truncated file would pass as a short one)."""
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    frame, in_frame = dctx.decompressobj(), False
    with open(path, "rb") as f:
        while True:
            data = f.read(chunk_size)
            if not data:
                break
            while data:
                in_frame = True
                out = frame.decompress(data)
                if out:
                    yield out
                if frame.eof:  # next frame (if any) starts in unused_data
                    data, frame, in_frame = frame.unused_data, dctx.decompressobj(), False
                else:
                    data = b""
    if in_frame:
        raise EOFError("zstd stream ends in the middle of a frame")


def _lines_of_chunks(chunks: Iterator[bytes]) -> Iterator[bytes]:
    rest = b""
    for chunk in chunks:
        rest += chunk
        *lines, rest = rest.split(b"\n")
        for line in lines:
            yield line + b"\n"
    if rest:
        yield rest


def open_binary(path: str) -> io.BufferedIOBase:
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def _raw_lines(path: str) -> Iterator[bytes]:
    if path.endswith(".zst"):
        yield from _lines_of_chunks(_zstd_chunks(path))
        return
    with open_binary(path) as f:
        yield from f


def _read_failure(e: BaseException) -> str:
    """What a damaged or unreadable input file looks like, in words."""
    if isinstance(e, EOFError):
        return f"the file is truncated ({e}); re-copy or re-compress it"
    if isinstance(e, gzip.BadGzipFile):
        return f"not a gzip file ({e}); rename it if it is plain JSONL"
    if isinstance(e, PermissionError):
        return "permission denied reading the file"
    if isinstance(e, zlib.error):
        return f"corrupt gzip data ({e})"
    if isinstance(e, OSError):
        return f"cannot read the file ({e.strerror or e})"
    return f"corrupt zstd data ({e})"


def _iter_lines(path: str) -> Iterator[Tuple[int, bytes]]:
    """(line number, raw line). A damaged or unreadable file raises CorpusError at the line where
    reading stopped; --on-error skip never skips it (the rest of the file is lost, not one line)."""
    try:
        import zstandard

        zstd_error: tuple = (zstandard.ZstdError,)
    except ImportError:
        zstd_error = ()
    lineno = 0
    try:
        for raw in _raw_lines(path):
            lineno += 1
            yield lineno, raw
    except (EOFError, OSError, zlib.error) + zstd_error as e:
        raise CorpusError(path, lineno + 1, _read_failure(e)) from None


def parse_line(path: str, lineno: int, raw: bytes, text_field: str, id_field: str) -> Optional[Record]:
    """Return the record, None for a blank line, or raise CorpusError naming file:line."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(path, lineno, f"invalid UTF-8 at byte {e.start}") from None
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise CorpusError(path, lineno, f"malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise CorpusError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
    if text_field not in obj:
        raise CorpusError(path, lineno, f"missing text field {text_field!r}")
    text = obj[text_field]
    if not isinstance(text, str):
        raise CorpusError(path, lineno, f"field {text_field!r} is {type(text).__name__}, not a string")
    if not text.strip():
        raise CorpusError(path, lineno, f"empty document (field {text_field!r} is blank)")
    doc_id = obj.get(id_field)
    doc_id = f"line-{lineno}" if doc_id is None else str(doc_id)
    return Record(lineno, doc_id, text)


def read_corpus(path: str, text_field: str = "text", id_field: str = "id", on_error: str = "fail",
                errors: Optional[List[CorpusError]] = None) -> Iterator[Record]:
    """Yield records of a JSONL(.gz/.zst) corpus. Bad records raise (fail) or are collected (skip)."""
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"input corpus not found: {path}")
    for lineno, raw in _iter_lines(path):
        try:
            rec = parse_line(path, lineno, raw, text_field, id_field)
        except CorpusError as e:
            if on_error == "fail":
                raise
            if errors is not None:
                errors.append(e)
            continue
        if rec is not None:
            yield rec


def is_held_out(doc_id: str, fraction: float, seed: int) -> bool:
    """Stable split by a hash of the id: the same document lands on the same side on every run."""
    if fraction <= 0:
        return False
    h = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
    return int.from_bytes(h[:8], "little") / 2**64 < fraction


def _write_json_atomic(path: str, obj) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def prepare(cfg: PrepareConfig) -> dict:
    from synpro_megatron.data.tokenizer import document_tokenizer, load_tokenizer

    if not 0 <= cfg.held_out < 1:
        raise ValueError(f"--held-out must be in [0, 1), got {cfg.held_out}")
    if cfg.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {cfg.workers}")
    if cfg.train_tokenizer:  # the trained folder becomes this dataset's tokenizer (meta.json records it)
        cfg.tokenizer = train_bpe_tokenizer(cfg, f"{cfg.output}.tokenizer")
    tok = load_tokenizer(cfg.tokenizer)
    # temporary files of earlier runs of this output that were killed (their PID is gone)
    for path in remove_stale_temp_files(cfg.output):
        print(f"synpro prepare: removed {path} (left by a killed run)", file=sys.stderr)
    errors: List[CorpusError] = []
    records = read_corpus(cfg.input, cfg.text_field, cfg.id_field, cfg.on_error, errors)
    if cfg.limit:
        records = (r for i, r in enumerate(records) if i < cfg.limit)
    # Everything goes to temporary prefixes first; _commit renames them (meta last) at the very end.
    tmp = f"{cfg.output}.tmp-{os.getpid()}"
    train_ids: List[str] = []
    heldout_ids: List[str] = []
    seen = set()
    try:
        with document_tokenizer(cfg.tokenizer, cfg.workers) as tokenize, \
                AtomicIndexedDatasetWriter(tmp, tok.vocab_size) as train_w, \
                AtomicIndexedDatasetWriter(tmp + "_heldout", tok.vocab_size) as held_w, \
                progress(desc=f"prepare {os.path.basename(cfg.input)}", unit="doc", every_n=10000) as bar:
            for rec, ids in tokenize(records, lambda r: r.text):
                bar.update(1)
                if rec.doc_id in seen:
                    err = CorpusError(cfg.input, rec.line, f"duplicate document id {rec.doc_id!r}")
                    if cfg.on_error == "fail":
                        raise err
                    errors.append(err)
                    continue
                seen.add(rec.doc_id)
                if is_held_out(rec.doc_id, cfg.held_out, cfg.seed):
                    held_w.add_document(ids)
                    heldout_ids.append(rec.doc_id)
                else:
                    train_w.add_document(ids)
                    train_ids.append(rec.doc_id)
            if not train_ids:
                raise ValueError(f"{cfg.input}: no usable documents")
    except BaseException:
        _remove_prefix_files(tmp)
        raise
    _write_json_atomic(tmp + ".docids.json", train_ids)
    _write_json_atomic(tmp + "_heldout.docids.json", heldout_ids)
    meta = {
        **asdict(cfg),
        "input": os.path.abspath(cfg.input),
        "tokenizer_name": tok.name,
        "vocab_size": tok.vocab_size,
        "eod": tok.eod,
        "num_docs": len(train_ids),
        "num_tokens": train_w.num_tokens,
        "heldout_docs": len(heldout_ids),
        "heldout_tokens": held_w.num_tokens,
        "skipped": [str(e) for e in errors],
    }
    _write_json_atomic(tmp + ".meta.json", meta)
    _commit(tmp, cfg.output)
    return meta


def train_bpe_tokenizer(cfg: PrepareConfig, folder: str) -> str:
    """A byte-level BPE tokenizer of `cfg.train_tokenizer` entries trained on the input corpus
    (offline, `tokenizers` library), saved as a Hugging Face folder. BPE training has no random
    choices: the same corpus and size give the same merges, so the folder is deterministic."""
    import shutil

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if cfg.train_tokenizer < 300:
        raise ValueError(f"--train-tokenizer must be >= 300 (256 bytes + merges + <|endoftext|>), got {cfg.train_tokenizer}")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=cfg.train_tokenizer, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    texts = (r.text for i, r in enumerate(read_corpus(cfg.input, cfg.text_field, cfg.id_field, cfg.on_error))
             if not cfg.limit or i < cfg.limit)
    bpe.train_from_iterator(texts, trainer=trainer)
    tmp = f"{folder}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>").save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return os.path.abspath(folder)


_OUTPUT_SUFFIXES = (".bin", ".idx", ".docids.json", "_heldout.bin", "_heldout.idx", "_heldout.docids.json")


def _remove_prefix_files(prefix: str) -> None:
    for suffix in _OUTPUT_SUFFIXES + (".meta.json",):
        if os.path.exists(prefix + suffix):
            os.remove(prefix + suffix)


def _commit(tmp: str, final: str) -> None:
    """Move a finished temporary output set into place. The old meta goes first and the new meta
    last, so at no moment does a meta file vouch for a mixed set of files."""
    if os.path.exists(final + ".meta.json"):
        os.remove(final + ".meta.json")
    for suffix in _OUTPUT_SUFFIXES:
        os.replace(tmp + suffix, final + suffix)
    os.replace(tmp + ".meta.json", final + ".meta.json")


def load_meta(prefix: str) -> dict:
    path = prefix + ".meta.json"
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: {prefix} is not a complete `synpro prepare` output (run prepare first)"
        )
    with open(path, encoding="utf-8") as f:
        return json.load(f)
