"""Evaluation: multiple-choice accuracy of checkpoints, effective tokens, run reports.

* `load_mc_examples`, `evaluate_multiple_choice`, `CheckpointScorer`, `evaluate_checkpoint`:
  zero-shot multiple-choice scoring on the packaged reference set (`synpro eval`).
* `fit_loss_curve`, `estimate_effective_tokens`: L(U) = E + A / U^alpha over baseline runs and the
  unique tokens a SynPro run is worth (`synpro effective-tokens`).
* `build_report`: RUN_DIR/report/report.md + figures from a run's logs (`synpro report`).

Names load on first use, so importing the package does not pull in torch, scipy or matplotlib.
"""
_LAZY = {
    "MCExample": "synpro_megatron.eval.multiple_choice",
    "load_mc_examples": "synpro_megatron.eval.multiple_choice",
    "evaluate_multiple_choice": "synpro_megatron.eval.multiple_choice",
    "CheckpointScorer": "synpro_megatron.eval.multiple_choice",
    "evaluate_checkpoint": "synpro_megatron.eval.multiple_choice",
    "format_table": "synpro_megatron.eval.multiple_choice",
    "LossFit": "synpro_megatron.eval.effective_tokens",
    "EffectiveTokens": "synpro_megatron.eval.effective_tokens",
    "EffectiveTokensError": "synpro_megatron.eval.effective_tokens",
    "fit_loss_curve": "synpro_megatron.eval.effective_tokens",
    "estimate_effective_tokens": "synpro_megatron.eval.effective_tokens",
    "build_report": "synpro_megatron.eval.report",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'synpro_megatron.eval' has no attribute {name!r}")
