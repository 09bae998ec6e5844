"""Megatron's pretraining batch sampler, reimplemented (megatron-core 0.16 ships no `megatron.training`).

Same semantics as `megatron.training.datasets.data_samplers.MegatronPretrainingSampler`: walk global
sample indices from `consumed_samples` on, cut them into chunks of micro_batch*dp, and give DP rank r
the slice [r*mbs, (r+1)*mbs) of each chunk. Resuming is starting at the consumed count, so any
dataset whose i-th sample is a pure function of i (GPTDataset, BlendedDataset, SynProBlendedDataset)
replays exactly.
"""
from __future__ import annotations


class PretrainingSampler:
    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int,
                 data_parallel_rank: int, data_parallel_size: int, drop_last: bool = True):
        if total_samples <= 0:
            raise ValueError(f"no samples to consume: total_samples={total_samples}")
        if consumed_samples >= total_samples:
            raise ValueError(f"consumed_samples {consumed_samples} >= total_samples {total_samples}")
        if micro_batch_size <= 0 or data_parallel_size <= 0:
            raise ValueError("micro_batch_size and data_parallel_size must be positive")
        if not 0 <= data_parallel_rank < data_parallel_size:
            raise ValueError(f"data_parallel_rank {data_parallel_rank} not in [0, {data_parallel_size})")
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.data_parallel_rank = data_parallel_rank
        self.micro_batch_times_dp = micro_batch_size * data_parallel_size
        self.drop_last = drop_last

    def __len__(self) -> int:
        return self.total_samples

    def _slice(self):
        start = self.data_parallel_rank * self.micro_batch_size
        return start, start + self.micro_batch_size

    def __iter__(self):
        batch = []
        for idx in range(self.consumed_samples, self.total_samples):
            batch.append(idx)
            if len(batch) == self.micro_batch_times_dp:
                s, e = self._slice()
                yield batch[s:e]
                batch = []
        if batch and not self.drop_last:
            s, e = self._slice()
            if batch[s:e]:
                yield batch[s:e]
