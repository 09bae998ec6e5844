"""Data-influence reward: how much more a rewrite helps the current pretraining model than its source.

The reward works with any scorer object that has `.score(texts) -> tensor/list` (higher = more
useful for the model's reference-set loss). In production that is
`synpro_megatron.influence.InfluenceProbe(checkpoint, reference_set)` at the plateau checkpoint.

`GradientDotScorer` is a small, real scorer over any Hugging Face causal LM: the first-order
influence lr * <grad L_ref, grad L_text> of one SGD step on a text on the reference loss
(TracIn / LESS style), restricted to a few parameter tensors so it is cheap on CPU. Tests use it
with a tiny LM; it can also stand in when no Megatron probe is available.
"""
from __future__ import annotations

import hashlib
from typing import Protocol, Sequence


class InfluenceScorer(Protocol):
    def score(self, texts: Sequence[str]): ...


def _as_floats(values, n: int, what: str) -> list[float]:
    try:
        import torch

        if isinstance(values, torch.Tensor):
            values = values.detach().float().cpu().reshape(-1).tolist()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    values = [float(v) for v in values]
    if len(values) != n:
        raise ValueError(f"influence scorer returned {len(values)} scores for {n} {what}")
    return values


class InfluenceReward:
    """influence(output) - influence(source). Source scores are cached by content, because a
    GRPO group scores one source against many outputs, and sources recur across steps."""

    def __init__(self, scorer: InfluenceScorer, cache_size: int = 100_000):
        if not hasattr(scorer, "score"):
            raise TypeError(f"{type(scorer).__name__} has no .score(texts) method")
        self.scorer = scorer
        self.cache_size = cache_size
        self._source_scores: dict[str, float] = {}

    def source_scores(self, sources: Sequence[str]) -> list[float]:
        keys = [hashlib.sha1(s.encode("utf-8", "replace")).hexdigest() for s in sources]
        todo: dict[str, str] = {}
        for k, s in zip(keys, sources):
            if k not in self._source_scores:
                todo.setdefault(k, s)
        if todo:
            fresh = _as_floats(self.scorer.score(list(todo.values())), len(todo), "sources")
            if len(self._source_scores) + len(fresh) > self.cache_size:
                self._source_scores.clear()
            self._source_scores.update(zip(todo.keys(), fresh))
        return [self._source_scores[k] for k in keys]

    def __call__(self, sources: Sequence[str], outputs: Sequence[str]) -> list[float]:
        if len(sources) != len(outputs):
            raise ValueError(f"{len(sources)} sources but {len(outputs)} outputs")
        if not outputs:
            return []
        out = _as_floats(self.scorer.score(list(outputs)), len(outputs), "outputs")
        return [o - s for o, s in zip(out, self.source_scores(sources))]


class GradientDotScorer:
    """score(x) = lr * <grad_theta L_ref, grad_theta L(x)> over the selected parameters.

    Positive when one SGD step on x would lower the loss on the reference texts.
    `param_filter(name) -> bool` picks the parameters (default: the last `last_blocks` transformer
    blocks and the final norm, which carry most of the signal at a fraction of the cost).
    """

    def __init__(self, model, tokenizer, reference_texts: Sequence[str], lr: float = 1e-4,
                 max_tokens: int = 256, last_blocks: int = 2, param_filter=None):
        import torch

        if not reference_texts:
            raise ValueError("GradientDotScorer needs at least one reference text")
        self.model, self.tokenizer = model, tokenizer
        self.lr, self.max_tokens = lr, max_tokens
        self.model.eval()
        names = [n for n, _ in model.named_parameters()]
        if param_filter is None:
            param_filter = self._default_filter(names, last_blocks)
        self.params = [p for n, p in model.named_parameters() if param_filter(n)]
        if not self.params:
            raise ValueError("GradientDotScorer: the parameter filter selected no parameters")
        self._requires = {id(p): p.requires_grad for p in model.parameters()}
        grads = [self._grad(t) for t in reference_texts]
        self.reference_grad = torch.stack(grads).mean(dim=0)

    @staticmethod
    def _default_filter(names, last_blocks):
        import re

        layer_ids = sorted({int(m.group(1)) for n in names for m in [re.search(r"\.layers?\.(\d+)\.", n)] if m})
        keep = set(layer_ids[-last_blocks:]) if layer_ids else set()

        def chosen(name):
            m = re.search(r"\.layers?\.(\d+)\.", name)
            if m:
                return int(m.group(1)) in keep
            return name.endswith("norm.weight") and "layers" not in name

        return chosen

    def _grad(self, text: str):
        import torch

        enc = self.tokenizer(text, return_tensors="pt", truncation=True, max_length=self.max_tokens,
                             add_special_tokens=False)
        ids = enc["input_ids"].to(next(self.model.parameters()).device)
        if ids.shape[1] < 2:
            return torch.zeros(sum(p.numel() for p in self.params))
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in self.params:
            p.requires_grad_(True)
        try:
            loss = self.model(input_ids=ids, labels=ids).loss
            grads = torch.autograd.grad(loss, self.params)
        finally:
            for p in self.model.parameters():
                p.requires_grad_(self._requires.get(id(p), True))
        return torch.cat([g.reshape(-1).float() for g in grads]).cpu()

    def score(self, texts: Sequence[str]):
        import torch

        return torch.tensor([self.lr * float(self._grad(t) @ self.reference_grad) for t in texts])
