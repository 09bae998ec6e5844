"""InfluenceProbe: how much would training on a text lower the reference-set loss, right now?

For a text x with gradient g_x of its mean per-token loss, one SGD step of size lr changes the
reference loss by  ΔL_ref ≈ -lr · <g_x, g_ref>  (first order; g_ref is the gradient of the reference
loss, the mean over reference documents of their mean per-token loss). `score(texts)` returns the
predicted *drop*  lr · <g_x, g_ref>  (higher = more useful), summed over every linear layer of the
GPT and estimated with the Kronecker (LoGra) projection  Ĝ = P_out G P_in^T  (k x k per layer):

    score(x) = lr · Σ_layers <Ĝ_x, Ĝ_ref>,   Ĝ_x = Σ_t (P_out g_t)(P_in x_t)^T  (fused kernel).

The SynPro reward is `reward(outputs, sources) = score(outputs) - score(sources)`.

Projections (`projection=`):
  * "reference" (default): P_out, P_in are the top-k left/right singular vectors of the layer's
    reference gradient G_ref, so Ĝ_ref = diag(σ_1..σ_k) and the score is the exact first-order score
    against the rank-k truncation of G_ref. Reference gradients have fast-decaying spectra, so this
    matches the exact score almost perfectly at k = 8-32 (measured: Pearson 1.00 on the tiny model,
    against 0.4-0.85 for random factors of the same size).
  * "random": Gaussian factors drawn from (seed, layer name, shard offset) (projections.py): a
    reference-agnostic sketch whose per-document Ĝ_x can be stored and compared with any reference.
`mode="exact"` computes the unprojected first-order score  lr · Σ_layers Σ_t g_t^T G_ref x_t
(``ExactGradientCapture``, off the capture hot path).

Packing: texts are packed many to a row (``packing.py``: document-block causal attention, positions
restarting per document) and the kernel returns one score per document from the rows' cu_seqlens.
lr: by default the learning rate the checkpoint's schedule gives for the next step. The reference
set: a seeded sample stratified over the file's tasks (``reference_sample.py``), whole documents.
``optimizer="adam"`` folds the checkpoint's Adam preconditioner into G_ref (``optimizer_state.py``);
SGD stays the default (it tracked real AdamW steps better, bench/RESULTS.md).

Layout independence: G_ref comes from one ordinary backward pass, each TP-sharded weight gradient
is gathered to the full (d_out, d_in) matrix, projections are sliced back to each rank's shard,
partial projections are summed over the TP group and layer scores over the pipeline stages. So one
checkpoint scores the same at TP=1, TP=2 or PP=2. The per-layer reference factors are computed once
per (checkpoint, reference set, projection) and saved beside the checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist

from synpro_megatron.influence.exact import ExactGradientCapture
from synpro_megatron.influence.hooks import GradientCapture
from synpro_megatron.influence.optimizer_state import adam_preconditioners, checkpoint_lr
from synpro_megatron.influence.reference_sample import sample_reference
from synpro_megatron.influence.packing import PackedBatch, pack_documents, pack_rows, split_long
from synpro_megatron.influence.projections import layer_projections
from synpro_megatron.pretrain.inference import load_for_inference
from synpro_megatron.pretrain.model import have_transformer_engine

DEFAULT_K = 32
PROJECTIONS = ("reference", "random")
OPTIMIZERS = ("sgd", "adam")  # the step the score models: plain SGD, or Adam's preconditioned step


def _rank_ranges(module, rank: int, size: int, local: int):
    """Global (offset, length) chunks held by TP rank `rank` (Megatron's strided split, e.g. fused SwiGLU fc1)."""
    stride = int(getattr(module.weight, "partition_stride", 1) or 1)
    chunk = local // stride
    return [((m * size + rank) * chunk, chunk) for m in range(stride)]


class InfluenceProbe:
    def __init__(self, checkpoint: str, reference_set: Union[None, str, Sequence[str]] = None, *,
                 k: int = DEFAULT_K, projection: str = "reference", seed: int = 0, lr: Optional[float] = None,
                 mode: str = "project", max_ref_docs: int = 64, max_len: Optional[int] = None,
                 batch_size: int = 4, reference_field: str = "text", tp: int = 1, pp: int = 1,
                 cache: bool = True, backend: str = "auto", packing: bool = True,
                 reference_seed: int = 0, optimizer: str = "sgd"):
        if mode not in ("project", "exact"):
            raise ValueError(f"mode must be 'project' or 'exact', got {mode!r}")
        if projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
        self.loaded = load_for_inference(checkpoint, tp=tp, pp=pp)
        self.model, self.tokenizer = self.loaded.model, self.loaded.tokenizer
        self.mode, self.projection, self.k, self.seed = mode, projection, k, seed
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if optimizer == "adam" and (tp, pp) != (1, 1):
            raise NotImplementedError("optimizer='adam' reads the Adam state at TP=1, PP=1 only")
        self.optimizer = optimizer
        # The learning rate of the step after the checkpoint (schedule at its step), not the peak lr.
        self.lr = lr if lr is not None else checkpoint_lr(self.loaded.config, self.loaded.step)
        self.max_len = max_len or self.loaded.config.model_config().seq_length
        self.batch_size = batch_size
        if reference_set is None or isinstance(reference_set, str):
            # Seeded, stratified over the file's tasks (the packaged file is sorted by task).
            sample = sample_reference(reference_set, reference_field, max_ref_docs, seed=reference_seed)
            self.reference_texts, self.reference_ids = sample.texts, sample.ids
        else:
            self.reference_texts = list(reference_set)[:max_ref_docs]
            self.reference_ids = [str(i) for i in range(len(self.reference_texts))]
        if not self.reference_texts:
            raise ValueError("the reference set is empty")
        capture_cls = ExactGradientCapture if mode == "exact" else GradientCapture
        self.capture = capture_cls(self.model, k_in=k, k_out=k, seed=seed, backend=backend)
        # Packing needs an arbitrary (document-block) attention mask: the local attention takes one;
        # the Transformer Engine spec (GPU) uses its own causal mask type, so there texts stay one per
        # row until a THD (cu_seqlens) attention path is wired in.
        self.packing = packing and not have_transformer_engine()
        self.reference_seed = reference_seed
        self._source_cache: Dict[str, float] = {}
        self._ref = self._reference(cache)
        if mode != "exact":  # score while capturing: the kernel emits one scalar per document
            self.capture.set_score_reference(self._ref)

    # ------------------------------------------------------------------ forward/backward

    def _tokenize(self, texts: Sequence[str]) -> List[List[int]]:
        """Scored texts keep their first max_len + 1 tokens (one row; GRPO completions fit)."""
        return [ids[: self.max_len + 1] for ids in self.tokenizer.tokenize_batch(list(texts))]

    def _rows(self, docs: List[List[int]]) -> List[List[int]]:
        if self.packing:
            return pack_rows(docs, self.max_len)
        return [[i] for i, d in enumerate(docs) if len(d) > 1]

    def _backward(self, batch: PackedBatch, seg_weights: Sequence[float]) -> None:
        """One backward of  sum_b w_b * mean_t loss_bt  over the batch's segments, through the pipeline.

        Packed rows carry a document-block causal attention mask and per-document positions, so each
        document's loss and gradient are those it would have alone in a row. Rows are max_len wide
        on every call, so every pipeline stage agrees on tensor shapes. The capture gets the
        segments' cu_seqlens: the kernel returns one score per segment (padding segments carry no
        loss, so theirs is 0 and is dropped).
        """
        from megatron.core.pipeline_parallel import get_forward_backward_func

        seg_len = (batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]).clamp(min=1)
        per_seg = torch.as_tensor(list(seg_weights), dtype=torch.float32) / seg_len
        w_tok = per_seg[batch.segment_ids] * batch.loss_mask
        tokens, labels, position_ids = batch.tokens, batch.labels, batch.position_ids
        mask = batch.attention_mask if self.packing else None  # one per row: plain causal attention
        if torch.cuda.is_available():
            tokens, labels, position_ids, w_tok = (t.cuda() for t in (tokens, labels, position_ids, w_tok))
            mask = mask.cuda() if mask is not None else None

        def forward_step(data_iterator, model):
            out = model(tokens, position_ids, mask, labels=labels)

            def loss_func(per_token):
                loss = (per_token.float() * w_tok).sum()
                return loss, {"loss": loss.detach()}

            return out, loss_func

        self.capture.set_documents(batch.cu_seqlens, loss_scale=1.0)  # the loss is unscaled
        get_forward_backward_func()(forward_step_func=forward_step, data_iterator=iter([None]), model=self.model,
                                    num_microbatches=1, seq_length=tokens.shape[1],
                                    micro_batch_size=tokens.shape[0], forward_only=False)

    def backward_texts(self, texts: Sequence[str], weights: Optional[Sequence[float]] = None) -> None:
        """Accumulate into the weights' .grad the gradient of  sum_i w_i * mean-token-loss(text_i)
        (w_i = 1), packed like ``score``; the hooks are off. For validation against real steps."""
        docs = self._tokenize(texts)
        w = list(weights) if weights is not None else [1.0] * len(docs)
        rows = self._rows(docs)
        self.capture.active = False
        try:
            for r0 in range(0, len(rows), self.batch_size):
                batch = pack_documents(docs, self.max_len, self.tokenizer.eod, rows=rows[r0:r0 + self.batch_size])
                self._backward(batch, [w[d] if d >= 0 else 0.0 for d in batch.doc_of_segment])
        finally:
            self.capture.active = True
            self.capture.reset()

    def reference_loss(self) -> float:
        """The loss whose drop ``score`` predicts: the mean over reference documents of their mean
        per-token loss (whole documents, windows as in ``_reference_pieces``). PP=1."""
        pieces, weights = self._reference_pieces()
        rows = self._rows(pieces)
        total = 0.0
        with torch.no_grad():
            for r0 in range(0, len(rows), self.batch_size):
                b = pack_documents(pieces, self.max_len, self.tokenizer.eod, rows=rows[r0:r0 + self.batch_size])
                dev = next(self.model.parameters()).device
                mask = b.attention_mask.to(dev) if self.packing else None
                per_token = self.model(b.tokens.to(dev), b.position_ids.to(dev), mask, labels=b.labels.to(dev))
                per_token = per_token.double().cpu() * b.loss_mask.double()
                for k, d in enumerate(b.doc_of_segment):
                    if d >= 0:
                        lo, hi = int(b.cu_seqlens[k]), int(b.cu_seqlens[k + 1])
                        total += weights[d] * per_token.reshape(-1)[lo:hi].sum().item() / (hi - lo)
        return total

    def _zero_param_grads(self) -> None:
        for p in self.model.parameters():
            p.grad = None

    # ------------------------------------------------------------------ reference gradient

    def _layers(self):
        layers = self.capture._layers  # noqa: SLF001 - the capture owns the name <-> module/shard map
        return [(name, layers[name]) for name in self.capture.layer_names]

    def _full_weight_grad(self, layer) -> torch.Tensor:
        """This layer's weight gradient in the TP=1 layout, gathered over the TP group."""
        local = layer.module.weight.grad.detach().float()
        if layer.tp_size == 1:
            return local.clone()
        parts = [torch.empty_like(local) for _ in range(layer.tp_size)]
        dist.all_gather(parts, local.contiguous(), group=layer.tp_group)
        full = torch.zeros(layer.d_out, layer.d_in, dtype=torch.float32, device=local.device)
        for rank, part in enumerate(parts):
            if layer.kind == "column":
                ranges = _rank_ranges(layer.module, rank, layer.tp_size, part.shape[0])
                pos = 0
                for off, n in ranges:
                    full[off:off + n] = part[pos:pos + n]
                    pos += n
            else:
                ranges = _rank_ranges(layer.module, rank, layer.tp_size, part.shape[1])
                pos = 0
                for off, n in ranges:
                    full[:, off:off + n] = part[:, pos:pos + n]
                    pos += n
        return full

    def _reference_pieces(self) -> Tuple[List[List[int]], List[float]]:
        """Whole reference documents; one longer than a row is cut into overlapping windows
        (``split_long``) weighted by their share of its loss tokens, so each document's term is
        its exact mean per-token loss, and the reference loss is the mean over documents."""
        docs = self.tokenizer.tokenize_batch(list(self.reference_texts))
        pieces, weights = [], []
        for ids in docs:
            windows = [w for w in split_long(ids, self.max_len) if len(w) > 1]
            total = sum(len(w) - 1 for w in windows)
            for w in windows:
                pieces.append(w)
                weights.append((len(w) - 1) / total / len(docs))
        return pieces, weights

    def _reference_weight_grads(self) -> Dict[str, torch.Tensor]:
        """G_ref = grad of (1/n) sum_docs mean-token-loss, per linear layer, unsharded (ordinary backward)."""
        pieces, weights = self._reference_pieces()
        rows = self._rows(pieces)
        self._zero_param_grads()
        self.capture.active = False  # only the ordinary weight gradients matter here
        try:
            for r0 in range(0, len(rows), self.batch_size):
                batch = pack_documents(pieces, self.max_len, self.tokenizer.eod, rows=rows[r0:r0 + self.batch_size])
                self._backward(batch, [weights[d] if d >= 0 else 0.0 for d in batch.doc_of_segment])
        finally:
            self.capture.active = True
        self.capture.reset()
        grads = {name: self._full_weight_grad(layer).cpu() for name, layer in self._layers()}
        self._zero_param_grads()
        if self.optimizer == "adam":  # fold Adam's preconditioner into the reference (optimizer_state.py)
            precond = adam_preconditioners(self.loaded.checkpoint, list(grads), self.tokenizer.vocab_size)
            grads = {n: G * precond[n] for n, G in grads.items()}
        return grads

    def _factors(self, grads: Dict[str, torch.Tensor]) -> Dict[str, dict]:
        """Per layer: full P_in, P_out and the projected reference Ĝ_ref (or G_ref itself in exact mode)."""
        out = {}
        for name, G in grads.items():
            if self.mode == "exact":
                out[name] = {"ref": G}
            elif self.projection == "reference":
                U, S, Vh = torch.linalg.svd(G.double(), full_matrices=False)
                r = min(self.k, S.numel())
                p_out, p_in = U[:, :r].T.float().contiguous(), Vh[:r].float().contiguous()
                out[name] = {"p_in": p_in, "p_out": p_out, "ref": torch.diag(S[:r]).float()}
            else:
                p_in, p_out = layer_projections(self.seed, name, self.k, self.k, G.shape[1], G.shape[0])
                out[name] = {"p_in": p_in, "p_out": p_out, "ref": p_out @ G @ p_in.T}
        return out

    def _cache_path(self) -> str:
        key = json.dumps([self.reference_texts, self.k, self.seed, self.max_len, self.mode, self.projection,
                          self.capture.layer_names, self.optimizer], sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return os.path.join(self.loaded.checkpoint, "influence", f"reference_{digest}.pt")

    def _reference(self, use_cache: bool) -> Dict[str, dict]:
        path = self._cache_path()
        if use_cache and os.path.exists(path):
            stored = torch.load(path, map_location="cpu", weights_only=True)
            factors = {n: stored[n] for n in self.capture.layer_names}
        else:
            factors = self._factors(self._reference_weight_grads())
            if use_cache:
                self._save(path, factors)
        for name, f in factors.items():
            if "p_in" in f:
                self.capture.set_projections(name, f["p_in"], f["p_out"])
        return {name: f["ref"] for name, f in factors.items()}

    def _save(self, path: str, factors: Dict[str, dict]) -> None:
        # Pipeline stages hold different layers: gather them so one file serves any layout.
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, factors)
        if dist.get_rank() == 0:
            merged = {}
            for p in parts:
                merged.update(p)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{os.getpid()}"
            torch.save(merged, tmp)
            os.replace(tmp, path)
        dist.barrier()

    # ------------------------------------------------------------------ scoring

    def _segment_scores(self) -> torch.Tensor:
        """Sum over this stage's layers of the last backward's per-segment scores."""
        per_layer = (self.capture.exact_scores(self._ref) if self.mode == "exact"
                     else self.capture.scores())
        total = None
        for v in per_layer.values():
            total = v.double().cpu() if total is None else total + v.double().cpu()
        return total

    def score(self, texts: Sequence[str]) -> torch.Tensor:
        """Predicted reference-loss drop  lr·<g_text, g_ref>  per text (float64, the same on every rank).

        Texts are packed many to a row (``packing``, the default) and the kernel returns one score
        per document from the packed batch's cu_seqlens; ``batch_size`` rows go through each backward.
        """
        from megatron.core import parallel_state as ps

        texts = list(texts)
        out = torch.zeros(len(texts), dtype=torch.float64)
        docs = self._tokenize(texts)
        rows = self._rows(docs)
        for r0 in range(0, len(rows), self.batch_size):
            batch = pack_documents(docs, self.max_len, self.tokenizer.eod, rows=rows[r0:r0 + self.batch_size])
            self.capture.reset()
            self._backward(batch, [1.0 if d >= 0 else 0.0 for d in batch.doc_of_segment])
            seg = self._segment_scores()
            if seg is not None:
                for k, d in enumerate(batch.doc_of_segment):
                    if d >= 0:
                        out[d] = seg[k]
        self.capture.reset()
        self._zero_param_grads()
        if ps.get_pipeline_model_parallel_world_size() > 1:
            dist.all_reduce(out, group=ps.get_pipeline_model_parallel_group())
        return self.lr * out

    def reward(self, outputs: Sequence[str], sources: Sequence[str]) -> torch.Tensor:
        """SynPro's influence reward: score(output) - score(source); source scores are cached."""
        missing = [s for s in dict.fromkeys(sources) if s not in self._source_cache]
        if missing:
            for text, value in zip(missing, self.score(missing).tolist()):
                self._source_cache[text] = value
        src = torch.tensor([self._source_cache[s] for s in sources], dtype=torch.float64)
        return self.score(outputs) - src

    def close(self) -> None:
        self.capture.remove()
