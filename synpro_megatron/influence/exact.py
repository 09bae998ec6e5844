"""Exact (unprojected) first-order influence scores: a validation tool, kept off the hot path.

``ExactGradientCapture`` uses the same hooks, layer names, TP shards, documents and loss scales as
``GradientCapture`` but keeps every layer input x and output-gradient g (activation-sized memory) and
scores them against full reference weight gradients:

    score_b = sum_{t in b} g_t^T G_ref x_t        (= <G_b, G_ref>_F, no projection)

Meant for small models: the ground truth that projected scores are checked against.
"""
from __future__ import annotations

import torch

from synpro_megatron.influence.hooks import GradientCapture


class ExactGradientCapture(GradientCapture):
    def reset(self) -> None:
        super().reset()
        self._saved: dict[str, dict[int, tuple]] = {n: {} for n in self._layers}

    def _on_grad(self, name, idx, x, grad, cu, scale) -> None:
        L = self._layers[name]
        xt, gt = (self._packed(L.tokens(t, sl)) for t, sl in ((x, L.x_slice), (grad.detach(), L.g_slice)))
        prev = self._saved[name].get(idx)
        if prev is not None:  # a second backward through the same graph accumulates
            gt = gt + prev[1]
        self._saved[name][idx] = (xt, gt, cu, scale)
        self._calls_done(name, idx)

    @staticmethod
    def _packed(t: torch.Tensor) -> torch.Tensor:
        return t.transpose(0, 1).reshape(-1, t.shape[-1]) if t.dim() == 3 else t

    def _calls_done(self, name, idx) -> None:
        self._proj[name][idx] = None  # marks the call's gradient as arrived (checked by _collect)

    def results(self, reduce_tp: bool = True):
        raise RuntimeError("ExactGradientCapture keeps no projections; use exact_scores()")

    def exact_scores(self, ref_grads: dict[str, torch.Tensor], reduce_tp: bool = True):
        """Layer name -> float64 (n_docs,) ``sum_{t in b} g_t^T G_ref x_t``.

        ``ref_grads[name]`` is the full (d_out, d_in) reference weight gradient in the TP=1 layout;
        each rank uses its shard, and ``reduce_tp`` sums the partial scores over the TP group.
        """
        out = {}
        for name, G in ref_grads.items():
            if name not in self._layers:
                raise KeyError(f"no hooked layer named {name!r}")
            L = self._layers[name]
            if tuple(G.shape) != (L.d_out, L.d_in):
                raise ValueError(f"{name}: reference gradient must be {(L.d_out, L.d_in)}, "
                                 f"got {tuple(G.shape)}")
            G = G.double()
            G = torch.cat([G[o:o + s] for o, s in L.out_ranges], 0)
            G = torch.cat([G[:, o:o + s] for o, s in L.in_ranges], 1)
            self._collect(self._proj, name)  # every forward has had its backward
            per_call = []
            for i in range(self._calls[name]):
                xt, gt, cu, scale = self._saved[name][i]
                G_dev = G.to(xt.device)
                per_tok = ((xt.double() @ G_dev.T) * gt.double()).sum(dim=1)
                csum = torch.nn.functional.pad(torch.cumsum(per_tok, 0), (1, 0))
                cu_dev = cu.to(xt.device)
                per_call.append((csum[cu_dev[1:]] - csum[cu_dev[:-1]]) / scale)
            if per_call:
                out[name] = self._reduce(name, torch.cat(per_call), reduce_tp)
        return out
