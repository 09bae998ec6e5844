"""Extending the blend schedule by one synthetic round: `extend_blend`, the one implementation the
loop controller (`synpro run`) and the NeMo-Run `blend_task` both call."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional

from synpro_megatron.rundir import ORGANIC, RunDir, parse_source_name, source_name

from .config import BlendWeights


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


@dataclass
class BlendExtension:
    path: str  # RUN_DIR/blend/schedule_round_K.json
    blended: List[str]  # kinds of round K now in the schedule
    empty: List[str]  # kinds of round K left out: every document failed the faithfulness gate
    synthetic: Dict[str, str]  # blend source name -> prefix, for every synthetic source of the schedule
    weights: Optional[Dict[str, float]]  # the new phase's weights; None when nothing was blended
    caps: Dict[str, float] = field(default_factory=dict)


def schedule_sources(run: RunDir, schedule) -> Dict[str, str]:
    """Synthetic source name -> dataset prefix for every source a schedule names."""
    names = {name for phase in schedule.phases for name in phase.weights if name != ORGANIC}
    return {name: run.synthetic_prefix(*parse_source_name(name)) for name in sorted(names)}


def extend_blend(run_dir: str, round_k: int, kinds: Iterable[str], start_sample: int, weights: BlendWeights,
                 seq_length: int, budget_samples: int, warn: Callable[[str], None] = print) -> BlendExtension:
    """Write RUN_DIR/blend/schedule_round_K.json: the schedule of round K-1 (organic only for K=1)
    plus a phase from `start_sample` on that blends in round K's synthetic sources.

    Edge cases, one behaviour each:
    - a kind whose dataset is empty (every document failed the gate) is left out, with a warning;
    - a round with no documents at all keeps the previous blend (the file is still written, so
      round K+1 finds its base);
    - sources are capped at `weights.max_epochs` reads over the `budget_samples - start_sample`
      samples left (earlier rounds too); with no budget left there is no cap.
    The previous round's file is never rewritten, so redoing this after a crash gives the same file.
    """
    run = RunDir(run_dir)
    kinds = list(kinds)
    for kind in kinds:
        prefix = run.synthetic_prefix(round_k, kind)
        missing = [p for p in (prefix + ".bin", prefix + ".idx") if not os.path.exists(p)]
        if missing:
            raise FileNotFoundError(f"blend round {round_k}: missing {', '.join(missing)} (run synthesize first)")
    blended = [k for k in kinds if os.path.getsize(run.synthetic_prefix(round_k, k) + ".bin") > 0]
    empty = [k for k in kinds if k not in blended]
    base = None
    if round_k > 1:
        previous = run.blend_schedule(round_k - 1)
        if not os.path.exists(previous):
            raise FileNotFoundError(f"{previous} not found: round {round_k - 1} was never blended")
        base = load_schedule(previous)
    caps: Dict[str, float] = {}
    if not blended:
        warn(f"[synpro blend] warning: round {round_k} produced no synthetic documents ({', '.join(empty)}); "
             f"the blend stays as it was")
        schedule, new_weights = (base if base is not None else initial_schedule()), None
    else:
        if empty:
            warn(f"[synpro blend] warning: round {round_k}: no {', '.join(empty)} document passed the "
                 f"faithfulness gate (see {run.dropped(round_k, empty[0])}); blending {', '.join(blended)} only")
        prefixes = schedule_sources(run, base) if base is not None else {}
        prefixes.update({source_name(round_k, k): run.synthetic_prefix(round_k, k) for k in blended})
        caps = epoch_caps(prefixes, seq_length, budget_samples - start_sample, weights.max_epochs)
        schedule = extend_schedule(base, start_sample, round_k, blended, weights, caps)
        new_weights = dict(schedule.phases[-1].weights)
    path = run.blend_schedule(round_k)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    schedule.save(path)
    return BlendExtension(path=path, blended=blended, empty=empty, synthetic=schedule_sources(run, schedule),
                          weights=new_weights, caps=caps)
