"""`GradientDotScorer` (test-only): a small, real influence scorer over any Hugging Face causal LM.

The first-order influence lr * <grad L_ref, grad L_text> of one SGD step on a text on the
reference loss (TracIn / LESS style), restricted to a few parameter tensors so it is cheap on
CPU. The rewards and GRPO tests use it with a tiny LM where the Megatron probe
(`synpro_megatron.influence.InfluenceProbe`, the production scorer) would need a checkpoint.
"""
from typing import Sequence


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
