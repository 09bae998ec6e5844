"""Always-on data valuation: every document segment of every training batch, scored inside the step.

``synpro pretrain --value-documents`` (or the loop's ``train.value_documents``) attaches a
``DocumentValuation`` to the trainer. During the normal forward/backward it

  * tells the gradient hooks where each document segment of each micro-batch starts and ends (the
    segments come from the dataset's own sample -> document map, so each carries its document id and
    source) and the loss scale Megatron applied to that micro-batch;
  * lets the fused kernel compute, per segment, ``<Ĝ_seg, Ĝ_ref>`` summed over the linear layers
    (``per_sample_score``: one scalar per segment, no per-document k x k output): the segment's share
    of the batch gradient (the segments' shares add up to the batch gradient exactly; without
    document-masked attention a segment's share also carries what later documents in its row
    backpropagate into it) against the reference gradient, through the rank-k factors of the
    reference gradient (its top singular vectors, ``projection="reference"`` in probe.py);
  * reads each segment's mean per-token loss from the model's per-token losses.

``influence = lr * <g_seg, g_ref> / tokens``: the predicted drop of the reference loss from one SGD
step of the current learning rate on the document's mean per-token loss (the probe's convention).
The reference factors are refreshed at every evaluation (and when training starts or resumes) from
the reference windows the evaluation reads: one extra forward/backward over them.

Rows go to ``RUN_DIR/valuation`` (valuation_store.py) and ``summarize``/``select_not_absorbed`` turn
them into a per-document view for ``synpro synthesize --select valuation:not-absorbed:FRACTION``.

Limits: pipeline parallelism (middle stages never see the data, so they cannot know the segments) is
not supported; TP and DP are.
"""
from __future__ import annotations

from collections import deque
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from synpro_megatron.influence.hooks import GradientCapture
from synpro_megatron.influence.valuation_store import ScoreWriter, load_scores, load_sources

DEFAULT_K = 16
SELECT_PREFIX = "valuation:"


# ----------------------------------------------------------------- segments of a training sample

def _gpt_parts(ds, j: int, seq: int):
    """[(doc_id, n_tokens)] of GPTDataset sample j in input-token positions (sums to seq)."""
    if ds.shuffle_index is None:
        ds._query_document_sample_shuffle_indices(j)  # loads the lazily memory-mapped indices
    i = int(ds.shuffle_index[j])
    (b, bo), (e, eo) = ds.sample_index[i], ds.sample_index[i + 1]
    lens = ds.dataset.sequence_lengths
    extra = int(ds.config.add_extra_token_to_sequence)
    parts = []
    for k in range(int(b), int(e) + 1):
        doc = int(ds.document_index[k])
        off = int(bo) if k == int(b) else 0
        end = int(eo) + extra if k == int(e) else int(lens[doc])
        parts.append((doc, end - off))
    # Text has seq + 1 tokens (inputs + the last label): clip the parts to the seq input positions.
    out, pos = [], 0
    for doc, n in parts:
        n = min(n, seq - pos)
        if n > 0:
            out.append((doc, n))
            pos += n
    if pos < seq:
        out.append((-1, seq - pos))  # padding after the last document (no loss)
    return out


def sample_segments(dataset, idx: int, seq: int):
    """(source index, [(doc_id, n_tokens)]) of training sample idx (plain or blended dataset)."""
    if hasattr(dataset, "dataset_index"):  # SynProBlendedDataset: source = schedule position
        src = int(dataset.dataset_index[idx])
        return src, _gpt_parts(dataset.datasets[src], int(dataset.dataset_sample_index[idx]), seq)
    return 0, _gpt_parts(dataset, int(idx), seq)


# ----------------------------------------------------------------- the in-step scorer

class DocumentValuation:
    """Scores every document segment of every training micro-batch. PP=1 (TP/DP any).

    Call order from the trainer: ``refresh(reference_batches)`` at start and after each evaluation,
    ``micro_batches(...)`` as the training data stream, ``end_step(step, lr)`` after each optimizer
    step, ``flush()`` before each checkpoint, ``close()`` at the end.
    """

    def __init__(self, gpt, cfg, dataset, sources: Dict[str, str], resume_step: int, num_microbatches: int,
                 k: int = DEFAULT_K, chunk_steps: int = 50, backend: str = "auto"):
        from megatron.core import parallel_state as ps

        if ps.get_pipeline_model_parallel_world_size() > 1:
            raise ValueError("--value-documents needs --pp 1 (middle pipeline stages never see the "
                             "data, so they cannot tell where documents start)")
        self.gpt, self.dataset, self.k = gpt, dataset, k
        self.seq = cfg.model_config().seq_length
        self.num_microbatches = num_microbatches
        self.chunk_steps = max(1, chunk_steps)
        self.tp_group = ps.get_tensor_model_parallel_group()
        self.tp_rank = ps.get_tensor_model_parallel_rank()
        self.dp_group = ps.get_data_parallel_group()
        dp_rank = ps.get_data_parallel_rank()
        self.capture = GradientCapture(gpt, k_in=k, k_out=k, backend=backend)
        self.capture.active = False  # until refresh() has set the reference factors
        self._pending: deque = deque()  # per micro-batch: segment metadata, in forward order
        self._losses: List[torch.Tensor] = []
        self._loss_hook = gpt.register_forward_hook(self._on_loss)
        self.writer = (ScoreWriter(cfg.run_dir, dp_rank, list(sources), resume_step, write_sources=dp_rank == 0,
                                   prefixes=sources) if self.tp_rank == 0 else None)
        self._steps_since_flush = 0

    # ---- reference factors
    def refresh(self, reference_batches: Sequence[Dict[str, torch.Tensor]]) -> None:
        """Reference gradient (mean per-token loss over the reference windows, averaged over DP) ->
        per layer top-k singular vectors (this rank's shard) as the projection, diag(σ) as reference.
        Rows scored against the previous factors are flushed first: one chunk per evaluation."""
        self.flush()
        layers = self.capture._layers  # noqa: SLF001 - the capture owns the name -> module map
        weights = [layers[n].module.weight for n in self.capture.layer_names]
        self.capture.active = False
        was_training = self.gpt.training
        self.gpt.eval()  # no dropout: the reference gradient is a property of the weights
        total = torch.zeros(1, dtype=torch.float64)
        grads = [torch.zeros_like(w, dtype=torch.float32) for w in weights]
        for b in reference_batches:
            total += float(b["loss_mask"].sum())
        dist.all_reduce(total, group=self.dp_group)
        for b in reference_batches:
            tokens, labels, pos = (_dev(b[k]) for k in ("tokens", "labels", "position_ids"))
            with torch.enable_grad():
                per_token = self.gpt(tokens, pos, None, labels=labels)
                loss = (per_token.float() * _dev(b["loss_mask"]).float()).sum() / float(total)
                for acc, g in zip(grads, torch.autograd.grad(loss, weights)):
                    acc += g.float()
        self.gpt.train(was_training)
        refs = {}
        for name, G in zip(self.capture.layer_names, grads):
            dist.all_reduce(G, group=self.dp_group)
            p_in, p_out = top_singular_factors(G, self.k)
            self.capture.set_local_projections(name, p_in, p_out)
            # R = P_out G P_in^T exactly (diag(σ) up to the randomized SVD's error): the score is
            # then exactly <G_doc, G_ref projected onto the two subspaces>.
            refs[name] = (p_out.double() @ G.double() @ p_in.double().T).float()
        self.capture.set_score_reference(refs)
        self.capture.active = True

    # ---- the data stream
    def micro_batches(self, dataset, total_samples: int, consumed: int, micro_batch: int, dp_rank: int,
                      dp_size: int) -> Iterator[Dict[str, torch.Tensor]]:
        """pretrain.data.micro_batches plus document segments; tells the hooks each micro-batch's
        cu_seqlens and loss scale right before the schedule runs its forward."""
        from synpro_megatron.data.sampler import PretrainingSampler
        from synpro_megatron.pretrain.data import collate

        for idx in PretrainingSampler(total_samples, consumed, micro_batch, dp_rank, dp_size):
            batch = collate([dataset[i] for i in idx])
            seg_src, seg_doc, seg_len = [], [], []
            for i in idx:
                src, parts = sample_segments(dataset, i, self.seq)
                for doc, n in parts:
                    seg_src.append(src)
                    seg_doc.append(doc)
                    seg_len.append(n)
            self.announce(batch, seg_src, seg_doc, seg_len)
            yield batch

    def announce(self, batch: Dict[str, torch.Tensor], seg_src: List[int], seg_doc: List[int],
                 seg_len: List[int]) -> None:
        """The next forward is this micro-batch, made of these segments (packed (row, position)
        order; doc -1 = padding): give the hooks its cu_seqlens and loss scale."""
        cu = torch.zeros(len(seg_len) + 1, dtype=torch.int64)
        cu[1:] = torch.cumsum(torch.tensor(seg_len), 0)
        n_tok = float(batch["loss_mask"].sum())
        # Megatron divides a 3-tuple loss by the micro-batch's tokens and by num_microbatches.
        scale = 1.0 / (max(n_tok, 1.0) * self.num_microbatches)
        if self.capture.active:
            self.capture.set_documents(cu, loss_scale=scale)
            self._pending.append((seg_src, seg_doc, cu, batch["loss_mask"].reshape(-1).clone()))

    def _on_loss(self, module, args, output) -> None:
        if self.capture.active and torch.is_grad_enabled() and isinstance(output, torch.Tensor):
            self._losses.append(output.detach().float().reshape(-1).cpu())

    # ---- after the optimizer step
    def end_step(self, step: int, lr: float) -> None:
        if not self.capture.active:
            return
        per_layer = self.capture.scores()
        total = None
        for name, v in per_layer.items():
            L = self.capture._layers[name]  # noqa: SLF001
            if L.tp_size == 1 and self.tp_rank != 0:
                continue  # an unsharded layer is the same on every TP rank: count it once
            total = v.double().cpu() if total is None else total + v.double().cpu()
        if total is not None and dist.get_world_size(self.tp_group) > 1:
            dist.all_reduce(total, group=self.tp_group)
        self.capture.reset()
        rows: Dict[str, list] = {c: [] for c in ("doc_id", "source", "step", "tokens", "loss", "influence")}
        merged: Dict[tuple, list] = {}
        offset = 0
        for (seg_src, seg_doc, cu, mask), losses in zip(self._pending, self._losses):
            for s, (src, doc) in enumerate(zip(seg_src, seg_doc)):
                a, b = int(cu[s]), int(cu[s + 1])
                n = float(mask[a:b].sum())
                if doc < 0 or n == 0:
                    continue
                loss_sum = float((losses[a:b] * mask[a:b]).sum())
                score = float(total[offset + s]) if total is not None else 0.0
                acc = merged.setdefault((src, doc), [0.0, 0.0, 0.0])
                acc[0] += n
                acc[1] += loss_sum
                acc[2] += score  # segments of one document add: their gradients add
            offset += len(seg_doc)
        self._pending.clear()
        self._losses.clear()
        for (src, doc), (n, loss_sum, score) in merged.items():
            rows["doc_id"].append(doc)
            rows["source"].append(src)
            rows["step"].append(step)
            rows["tokens"].append(int(n))
            rows["loss"].append(loss_sum / n)
            rows["influence"].append(lr * score / n)
        if self.writer is not None:
            self.writer.append(rows)
            self._steps_since_flush += 1
            if self._steps_since_flush >= self.chunk_steps:
                self.flush()

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()
        self._steps_since_flush = 0

    def close(self) -> None:
        self.flush()
        self._loss_hook.remove()
        self.capture.remove()


def attach_valuation(cfg, gpt, dataset, step: int, num_microbatches: int, reference_batches):
    """The trainer's one call: a DocumentValuation with fresh reference factors (cfg.value_documents)."""
    prefixes = {"organic": cfg.data, **cfg.synthetic}
    names = list(dataset.sources) if cfg.blend_schedule else ["organic"]  # dataset_id order
    sources = {n: prefixes.get(n, "") for n in names}
    valuation = DocumentValuation(gpt, cfg, dataset, sources, resume_step=step, num_microbatches=num_microbatches)
    valuation.refresh(reference_batches)
    return valuation


def top_singular_factors(G: torch.Tensor, k: int):
    """(P_in, P_out): G's top-k right / left singular vectors as rows, (k, d_in) and (k, d_out).

    A full SVD of the output layer's (vocab x hidden) gradient costs minutes on a CPU, so large
    matrices use a randomized range finder (Halko et al.) with a fixed seed and 4 power iterations:
    reference gradients have fast-decaying spectra, where it recovers the top-k subspace closely.
    """
    r = min(k, *G.shape)
    if min(G.shape) <= 2 * k + 8 or G.numel() <= 1 << 18:
        U, _, Vh = torch.linalg.svd(G.double(), full_matrices=False)
        return Vh[:r].float().contiguous(), U[:, :r].T.float().contiguous()
    gen = torch.Generator(device="cpu").manual_seed(0)
    Gd = G.double()
    omega = torch.randn(G.shape[1], r + 8, generator=gen, dtype=torch.float64).to(G.device)
    Q, _ = torch.linalg.qr(Gd @ omega)
    for _ in range(4):
        Q, _ = torch.linalg.qr(Gd.T @ Q)
        Q, _ = torch.linalg.qr(Gd @ Q)
    Ub, _, Vh = torch.linalg.svd(Q.T @ Gd, full_matrices=False)
    U = Q @ Ub
    return Vh[:r].float().contiguous(), U[:, :r].T.float().contiguous()


def _dev(t: torch.Tensor) -> torch.Tensor:
    return t.cuda(non_blocking=True) if torch.cuda.is_available() else t


# ----------------------------------------------------------------- summaries and selection

def summarize(run_dir: str) -> Dict[str, np.ndarray]:
    """One row per (source, doc_id): times seen, last step, mean and last loss and influence, and the
    loss trend (least-squares slope of loss against step, per 1000 steps; 0 if seen once)."""
    cols = load_scores(run_dir)
    key = cols["source"].astype(np.int64) * (1 << 40) + cols["doc_id"]
    uniq, inv = np.unique(key, return_inverse=True)
    n = np.bincount(inv).astype(np.float64)

    def mean(v):
        return np.bincount(inv, weights=v.astype(np.float64)) / n

    step = cols["step"].astype(np.float64)
    loss = cols["loss"].astype(np.float64)
    ms, ml = mean(step), mean(loss)
    cov = np.bincount(inv, weights=(step - ms[inv]) * (loss - ml[inv]))
    var = np.bincount(inv, weights=(step - ms[inv]) ** 2)
    trend = np.where(var > 0, cov / np.where(var > 0, var, 1.0), 0.0) * 1000.0
    last = np.zeros(len(uniq), dtype=np.int64)
    np.maximum.at(last, inv, cols["step"])
    is_last = cols["step"] == last[inv]  # one row per (doc, step): the last step's row
    last_loss = np.zeros(len(uniq))
    last_infl = np.zeros(len(uniq))
    last_loss[inv[is_last]] = loss[is_last]
    last_infl[inv[is_last]] = cols["influence"][is_last]
    return {"source": (uniq >> 40).astype(np.int16), "doc_id": uniq & ((1 << 40) - 1), "seen": n.astype(np.int64),
            "last_step": last, "mean_loss": ml, "last_loss": last_loss, "loss_trend": trend,
            "mean_influence": mean(cols["influence"]), "last_influence": last_infl}


def select_not_absorbed(run_dir: str, fraction: float, source: str = "organic") -> List[int]:
    """Document ids (of ``source``) the model has not absorbed yet and that still help the reference
    loss: mean influence > 0, ranked by last-seen loss (highest first; ties: the loss falling
    slowest, then the id); the top ``fraction`` of all valued documents of that source."""
    if not 0 < fraction <= 1:
        raise ValueError(f"valuation selection: FRACTION must be in (0, 1], got {fraction}")
    sources = load_sources(run_dir)["sources"]
    if source not in sources:
        raise ValueError(f"valuation scores in {run_dir} have no source {source!r} (have {sources})")
    s = summarize(run_dir)
    mine = s["source"] == sources.index(source)
    k = max(1, round(fraction * int(mine.sum())))
    cand = np.nonzero(mine & (s["mean_influence"] > 0))[0]
    order = sorted(cand.tolist(), key=lambda i: (-s["last_loss"][i], -s["loss_trend"][i], int(s["doc_id"][i])))
    return sorted(int(s["doc_id"][i]) for i in order[:k])


def parse_select(spec: str) -> tuple[str, float]:
    """'valuation:not-absorbed:0.15' -> ('not-absorbed', 0.15), with errors naming the spec."""
    parts = spec.split(":")
    if len(parts) != 3 or parts[0] != "valuation" or parts[1] != "not-absorbed":
        raise ValueError(f"--select {spec!r}: expected 'valuation:not-absorbed:FRACTION'")
    try:
        fraction = float(parts[2])
    except ValueError:
        raise ValueError(f"--select {spec!r}: FRACTION is not a number") from None
    if not 0 < fraction <= 1:
        raise ValueError(f"--select {spec!r}: FRACTION must be in (0, 1]")
    return parts[1], fraction


def select_source_documents(docs: list, spec: str, run_dir: str, organic_docids: Optional[List[str]] = None) -> list:
    """The synthesize hook: the pool documents (``SourceDoc`` with ``doc_id``) whose organic document
    the stored valuation selects. ``organic_docids`` maps a .bin index to the pool's id; default: the
    ``.docids.json`` of the organic prefix the valued run trained on."""
    import json

    _, fraction = parse_select(spec)
    if organic_docids is None:
        path = load_sources(run_dir)["prefixes"]["organic"] + ".docids.json"
        with open(path, encoding="utf-8") as f:
            organic_docids = json.load(f)
    wanted = {organic_docids[i] for i in select_not_absorbed(run_dir, fraction)}
    return [d for d in docs if d.doc_id in wanted]
