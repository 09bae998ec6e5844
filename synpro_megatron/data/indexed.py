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


class DatasetError(ValueError):
    """A damaged IndexedDataset, named by file (raised before Megatron maps it)."""


_IDX_MAGIC = b"MMIDIDX\x00\x00"
_IDX_HEADER = len(_IDX_MAGIC) + 8 + 1 + 8 + 8  # magic, version, dtype code, #sequences, #documents
# megatron.core.datasets.indexed_dataset.DType codes -> bytes per token
_DTYPE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 8, 7: 4, 8: 2}


def check_indexed_dataset(prefix: str, what: str = "dataset") -> None:
    """Check PREFIX.idx against itself and PREFIX.bin against the index, per file, before opening
    them: Megatron would fail later (a short .bin at the first training step) with a message that
    names no file, and a short .idx leaves an ignored traceback from IndexedDataset.__del__."""
    idx, bin_ = prefix + ".idx", prefix + ".bin"
    for path in (idx, bin_):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{what} {path} not found (run `synpro prepare` first)")
    redo = f"re-create it (rerun the command that wrote {prefix})"
    idx_size = os.path.getsize(idx)
    with open(idx, "rb") as f:
        header = f.read(_IDX_HEADER)
        if len(header) < _IDX_HEADER or not header.startswith(_IDX_MAGIC):
            raise DatasetError(f"{idx}: not a Megatron index file ({idx_size} bytes, bad header); {redo}")
        code = header[len(_IDX_MAGIC) + 8]
        n_seq, n_doc = np.frombuffer(header[-16:], dtype="<u8")
        if code not in _DTYPE_BYTES:
            raise DatasetError(f"{idx}: unknown token dtype code {code}; {redo}")
        expected = _IDX_HEADER + int(n_seq) * (4 + 8) + int(n_doc) * 8
        if idx_size != expected:
            raise DatasetError(f"{idx}: damaged index: {idx_size} bytes, but its header ({n_seq} sequences, "
                               f"{n_doc} documents) needs {expected}; {redo}")
        if n_seq == 0:
            return
        lengths = np.fromfile(f, dtype="<i4", count=int(n_seq))
        pointers = np.fromfile(f, dtype="<i8", count=int(n_seq))
    need = int(pointers[-1]) + int(lengths[-1]) * _DTYPE_BYTES[code]
    have = os.path.getsize(bin_)
    if have < need:
        raise DatasetError(f"{bin_}: damaged data: {have} bytes, but {idx} indexes {need}; {redo}")


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

    check_indexed_dataset(prefix)
    ds = IndexedDataset(prefix)
    for i in range(len(ds)):
        yield np.array(ds[i], dtype=np.int64)
