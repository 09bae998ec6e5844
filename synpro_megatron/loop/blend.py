"""Extending the blend schedule by one synthetic round (shared by the controller and blend_task)."""
from __future__ import annotations

from typing import Dict, Iterable, Optional

from .config import BlendWeights
from .layout import source_name

ORGANIC = "organic"


def initial_schedule():
    """Organic only: what pretraining does before the first round."""
    from synpro_megatron.blending.schedule import BlendSchedule

    return BlendSchedule.constant({ORGANIC: 1.0})


def epoch_caps(prefixes: Dict[str, str], seq_length: int, remaining_samples: int,
               max_epochs: Optional[float]) -> Dict[str, float]:
    """Largest weight each synthetic source (this round's and the earlier ones still in the mix)
    may get without being read more than `max_epochs` times in the `remaining_samples` left to
    train (a round much smaller than the rest of the budget would otherwise be repeated dozens of
    times). Empty when there is no limit."""
    if not max_epochs or remaining_samples <= 0:
        return {}
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    caps = {}
    for name, prefix in prefixes.items():
        dataset = IndexedDataset(prefix)  # keep it alive: its lengths are a view of its mmap
        tokens = int(dataset.sequence_lengths.sum())
        del dataset
        caps[name] = max_epochs * (tokens / seq_length) / remaining_samples
    return caps


def round_weights(previous: Dict[str, float], round_k: int, kinds: Iterable[str], w: BlendWeights,
                  caps: Optional[Dict[str, float]] = None) -> Dict[str, float]:
    """Weights of the phase that blends in round `round_k`.

    `previous` holds the weights in force at the end of the previous phase. Every earlier
    synthetic source keeps a share of `w.earlier_rounds` in proportion to its previous weight, so
    earlier rounds stay in the mix; the organic data and the new round get their configured
    weights. The result is normalised to sum to 1 (zeros are dropped). A new source whose weight
    exceeds its cap (`epoch_caps`) is cut to the cap and the rest goes to the organic data.
    """
    new = {ORGANIC: float(w.organic)}
    for kind in kinds:
        new[source_name(round_k, kind)] = float(w.new_round[kind])
    earlier = {k: v for k, v in previous.items() if k != ORGANIC and k not in new and v > 0}
    total_earlier = sum(earlier.values())
    if total_earlier > 0 and w.earlier_rounds > 0:
        for k, v in earlier.items():
            new[k] = w.earlier_rounds * v / total_earlier
    total = sum(new.values())
    out = {k: v / total for k, v in new.items() if v > 0}
    for name, cap in (caps or {}).items():
        if name in out and out[name] > cap:
            out[ORGANIC] = out.get(ORGANIC, 0.0) + out[name] - cap
            out[name] = cap
    return {k: v for k, v in out.items() if v > 0}


def extend_schedule(base, start_sample: int, round_k: int, kinds: Iterable[str], w: BlendWeights,
                    caps: Optional[Dict[str, float]] = None):
    """`base` (a BlendSchedule, or None for organic only) plus a phase for round `round_k` from
    `start_sample` on. Phases before `start_sample` are untouched, so resuming stays exact."""
    base = base if base is not None else initial_schedule()
    last = base.phases[-1]
    previous = dict(last.end_weights if last.end_weights is not None else last.weights)
    total = sum(previous.values())
    previous = {k: v / total for k, v in previous.items()}
    return base.with_phase(start_sample, round_weights(previous, round_k, list(kinds), w, caps))


def load_schedule(path: Optional[str]):
    if path is None:
        return None
    from synpro_megatron.blending.schedule import BlendSchedule

    return BlendSchedule.load(path)
