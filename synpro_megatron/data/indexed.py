"""Writing Megatron IndexedDatasets (PREFIX.bin / PREFIX.idx) without leaving half-written files.

Everything is written under temporary names in the target folder and renamed at the end, .bin
first and .idx last: a prefix whose .idx exists is complete.
"""
from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np


def token_dtype(vocab_size: int):
    # Megatron's own choice (DType.optimal_dtype): uint16 when every id fits.
    return np.uint16 if vocab_size < 65500 else np.int32


class AtomicIndexedDatasetWriter:
    """Context manager: add documents, then on clean exit the dataset appears under `prefix`."""

    def __init__(self, prefix: str, vocab_size: int):
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

        self.prefix = prefix
        folder = os.path.dirname(os.path.abspath(prefix))
        os.makedirs(folder, exist_ok=True)
        self._tmp = f"{prefix}.tmp-{os.getpid()}"
        self.dtype = token_dtype(vocab_size)
        self._builder = IndexedDatasetBuilder(self._tmp + ".bin", dtype=self.dtype)
        self.num_docs = 0
        self.num_tokens = 0

    def add_document(self, token_ids: Sequence[int]) -> None:
        arr = np.asarray(token_ids, dtype=np.int64)
        self._builder.add_document(arr, [arr.size])
        self.num_docs += 1
        self.num_tokens += int(arr.size)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self._builder.data_file.close()
            for ext in (".bin", ".idx"):
                if os.path.exists(self._tmp + ext):
                    os.remove(self._tmp + ext)
            return False
        self._builder.finalize(self._tmp + ".idx")
        os.replace(self._tmp + ".bin", self.prefix + ".bin")
        os.replace(self._tmp + ".idx", self.prefix + ".idx")
        return False


def write_indexed_dataset(prefix: str, documents: Iterable[Sequence[int]], vocab_size: int) -> int:
    """Write token-id documents (the caller appends EOD) as one IndexedDataset; returns #documents."""
    with AtomicIndexedDatasetWriter(prefix, vocab_size) as w:
        for doc in documents:
            w.add_document(doc)
    return w.num_docs


def read_documents(prefix: str):
    """Yield each document of an IndexedDataset as a numpy array of token ids (copied: the arrays
    must outlive the memory map, which closes with the dataset object)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix)
    for i in range(len(ds)):
        yield np.array(ds[i], dtype=np.int64)
