"""Capture projected per-document weight gradients of linear layers with forward/backward hooks.

``GradientCapture(model)`` hooks every ``torch.nn.Linear`` and megatron-core ``ColumnParallelLinear`` /
``RowParallelLinear`` (or a chosen subset). For each layer call it keeps a reference to the input x
(autograd keeps it for the weight gradient anyway) and registers a tensor hook on the output; when the
output-gradient g arrives, it immediately computes

    Ĝ_b = P_out G_b P_in^T = sum_{t in b} (P_out g_t)(P_in x_t)^T      (k_out x k_in per document)

with ``synpro_megatron.kernels.per_sample_projection`` (fused Triton kernel on CUDA) and drops g. The
documents are given by ``cu_seqlens`` over the packed tokens (``set_documents``).

Loss scaling. G_b is the gradient of document b's *summed* per-token loss when the backpropagated
loss is ``sum_t loss_t``. If the loss was scaled by a factor c relative to that sum, pass
``loss_scale=c`` and results are divided by it. Examples: a mean over n tokens, c = 1/n. Megatron's
schedule (0.16) divides a 3-tuple ``loss_func`` result by the micro-batch's token count and by
num_microbatches unless ``config.calculate_per_token_loss``, a 2-tuple one by num_microbatches (times
the CP size); an fp16 grad scaler multiplies by its scale. When c differs between micro-batches, give
it per micro-batch with ``set_documents(cu_seqlens, loss_scale=c)`` before that micro-batch's forward.

Tensor parallelism. Each rank projects its own shard with the matching columns of the TP=1 matrices
(``projections.py``): ColumnParallelLinear shards d_out, so P_out is sliced; RowParallelLinear shards
d_in, so P_in is sliced. Summing the ranks' partial projections over the TP group (``results()``
does it by default) gives the TP=1 result. Pipeline stages each hold their own layers; names are
made PP-independent by ``canonical_layer_name``.

Token order. Megatron layers see [s, b, h] tensors; ``cu_seqlens`` indexes the usual packed (b, s)
order (batch row after batch row), and the kernel reads the [s, b, h] tensors in place through their
strides (no transpose copy). ``nn.Linear`` inputs are flattened as they are (``x.reshape(-1, d)``). Without
``set_documents`` every batch row (every leading-dim slice of a >=3-D input; the whole input if 2-D)
is one document.

Limits: sequence parallelism with TP > 1, MoE expert layers and activation recomputation (forward
hooks would fire again during backward) are not supported; per-document isolation also needs
document-masked attention, otherwise attention couples documents' gradients.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
import torch.distributed as dist

from synpro_megatron.influence.projections import layer_projections
from synpro_megatron.kernels import per_sample_projection, per_sample_score

try:  # megatron-core is optional for plain-PyTorch use
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
except ImportError:  # pragma: no cover - exercised only without megatron-core
    ColumnParallelLinear = RowParallelLinear = None

_WRAPPER_PREFIXES = ("module",)  # DDP / Float16Module wrap the model as `.module`


def canonical_layer_name(model: torch.nn.Module, module_name: str) -> str:
    """A name for ``model.get_submodule(module_name)`` that is the same at any TP/PP layout.

    * Leading wrapper components (``module.`` from DDP / Float16Module) are dropped.
    * A numeric component whose module has an int ``layer_number`` (a megatron ``TransformerLayer``;
      1-based, global: it already includes the pipeline offset) becomes ``layer_number - 1``, the
      global 0-based layer index. So stage 1 of PP=2 with 2 local layers names its
      ``decoder.layers.0.mlp.linear_fc1`` as ``decoder.layers.2.mlp.linear_fc1``, as at PP=1.
    """
    parts = module_name.split(".") if module_name else []
    out, mod = [], model
    for p in parts:
        mod = mod._modules[p]
        layer_number = getattr(mod, "layer_number", None)
        if p.isdigit() and isinstance(layer_number, int):
            out.append(str(layer_number - 1))
        else:
            out.append(p)
    while out and out[0] in _WRAPPER_PREFIXES:
        out.pop(0)
    return ".".join(out)


def _megatron_kind(module) -> str | None:
    if ColumnParallelLinear is not None and isinstance(module, ColumnParallelLinear):
        return "column"
    if RowParallelLinear is not None and isinstance(module, RowParallelLinear):
        return "row"
    return None


def _tp_rank_size(module, local: int, full: int) -> tuple[int, int]:
    size = full // local
    if size == 1:
        return 0, 1
    group = getattr(module, "tp_group", None)
    return dist.get_rank(group=group), size


def _shard_ranges(module, local: int, full: int) -> tuple[list[tuple[int, int]], int, int]:
    """Global (offset, size) ranges of this rank's local slice, in local order.

    Megatron splits a strided weight (``partition_stride`` s, e.g. s=2 for the fused [gate; up] of a
    SwiGLU fc1) into s*tp chunks of local/s rows and gives rank r chunks r, r+tp, ... .
    """
    rank, size = _tp_rank_size(module, local, full)
    stride = int(getattr(module.weight, "partition_stride", 1) or 1)
    chunk = local // stride
    return [((m * size + rank) * chunk, chunk) for m in range(stride)], rank, size


class _Layer:
    """Static facts about one hooked layer: full dims, this rank's shard, token layout."""

    def __init__(self, name: str, module: torch.nn.Module, layout: str):
        self.name, self.module = name, module
        kind = _megatron_kind(module)
        self.kind = kind or "linear"
        self.x_slice = self.g_slice = None  # local slices of a full x / g (scatter / gather cases)
        self.tp_group, self.tp_size = None, 1
        if kind is None:
            self.d_in, self.d_out = module.in_features, module.out_features
            self.in_ranges, self.out_ranges = [(0, self.d_in)], [(0, self.d_out)]
        else:
            self.d_in, self.d_out = module.input_size, module.output_size
            if getattr(module, "is_expert", False):
                raise NotImplementedError(f"{name}: MoE expert layers are not supported")
            self.tp_group = getattr(module, "tp_group", None)
            if kind == "column":
                local = module.output_size_per_partition
                self.out_ranges, rank, self.tp_size = _shard_ranges(module, local, self.d_out)
                self.in_ranges = [(0, self.d_in)]
                if module.gather_output and self.tp_size > 1:
                    self.g_slice = (rank * local, local)
            else:
                local = module.input_size_per_partition
                self.in_ranges, rank, self.tp_size = _shard_ranges(module, local, self.d_in)
                self.out_ranges = [(0, self.d_out)]
                if not module.input_is_parallel and self.tp_size > 1:
                    self.x_slice = (rank * local, local)
            if getattr(module, "sequence_parallel", False) and self.tp_size > 1:
                raise NotImplementedError(f"{name}: sequence parallelism is not supported")
        self.layout = layout if layout != "auto" else ("sbh" if kind else "flat")

    def tokens(self, t: torch.Tensor, sl) -> torch.Tensor:
        """The tokens of an activation or gradient as the kernel reads them, never copied: an
        [s, b, h] view for Megatron layers (packed (b, s) order is strided access in the kernel) or
        an (N, d) view of flat inputs (a copy only if the input itself is not viewable)."""
        if sl is not None:
            t = t.narrow(-1, sl[0], sl[1])
        if self.layout == "sbh" and t.dim() == 3:
            return t
        return t.reshape(-1, t.shape[-1])

    def default_cu(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3:
            n_docs, length = 1, x.shape[0] if x.dim() == 2 else 1
        elif self.layout == "sbh" and x.dim() == 3:
            n_docs, length = x.shape[1], x.shape[0]
        else:
            n_docs, length = math.prod(x.shape[:-2]), x.shape[-2]
        return torch.arange(n_docs + 1, dtype=torch.int64) * length


class GradientCapture:
    """Hooks that compute projected per-document weight gradients during backward.

    Args:
        model: the module tree to hook (a megatron model chunk, possibly DDP-wrapped, or any nn.Module).
        k_in, k_out: projection sizes; each layer's result is (n_docs, k_out, k_in).
        seed: seeds the projection matrices (with the canonical layer name), see ``projections.py``.
        layers: None (every supported linear layer), an iterable of canonical names, or a callable
            ``(canonical_name, module) -> bool``.
        backend, deterministic: passed to ``per_sample_projection``.
        loss_scale: factor of the backpropagated loss relative to the sum of per-token losses.
        layout: ``"auto"`` ([s, b, h] for megatron layers, flat for nn.Linear), ``"sbh"`` or ``"flat"``.
        projection_dtype: dtype of the projection matrices (fp32 default; the kernel upcasts).

    Use as a context manager (hooks are removed on exit) or call ``remove()``.
    """

    def __init__(self, model: torch.nn.Module, *, k_in: int = 32, k_out: int = 32, seed: int = 0,
                 layers: Iterable[str] | Callable | None = None,
                 backend: str = "auto", deterministic: bool = True, loss_scale: float = 1.0,
                 layout: str = "auto", projection_dtype: torch.dtype = torch.float32):
        if layout not in ("auto", "sbh", "flat"):
            raise ValueError(f"layout must be 'auto', 'sbh' or 'flat', got {layout!r}")
        if k_in < 1 or k_out < 1:
            raise ValueError(f"k_in and k_out must be >= 1, got {k_in}, {k_out}")
        if not loss_scale:
            raise ValueError("loss_scale must be non-zero")
        self.k_in, self.k_out, self.seed = k_in, k_out, seed
        self._score_ref: dict[str, torch.Tensor] | None = None
        self.active = True  # False: the hooks let forwards/backwards pass untouched
        self.backend, self.deterministic, self.loss_scale = backend, deterministic, loss_scale
        self.projection_dtype = projection_dtype
        self._cu: torch.Tensor | None = None
        self._mb_loss_scale: float | None = None
        self._layers: dict[str, _Layer] = {}
        self._handles = []
        self._proj_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._custom: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        wanted = set(layers) if layers is not None and not callable(layers) else None
        for module_name, module in model.named_modules():
            if not (isinstance(module, torch.nn.Linear) or _megatron_kind(module)):
                continue
            if getattr(module, "is_expert", False):
                continue  # MoE experts: token routing breaks the per-document token order
            name = canonical_layer_name(model, module_name)
            if wanted is not None and name not in wanted:
                continue
            if callable(layers) and not layers(name, module):
                continue
            if name in self._layers:
                raise ValueError(f"two modules share the canonical name {name!r}")
            self._layers[name] = _Layer(name, module, layout)
            self._handles.append(module.register_forward_hook(self._forward_hook(name),
                                                              with_kwargs=True))
        if wanted is not None and wanted - set(self._layers):
            raise ValueError(f"no supported linear layer named {sorted(wanted - set(self._layers))}")
        self.reset()

    # ----------------------------------------------------------------------------------- control
    @property
    def layer_names(self) -> list[str]:
        return sorted(self._layers)

    def set_documents(self, cu_seqlens: torch.Tensor | None, loss_scale: float | None = None) -> None:
        """Document boundaries (None: one per batch row) and optionally the loss scale of the
        following forward calls; both are captured at forward time, so pipeline schedules that run
        several forwards before their backwards get each micro-batch's own values."""
        if loss_scale is not None and not loss_scale:
            raise ValueError("loss_scale must be non-zero")
        self._cu = None if cu_seqlens is None else cu_seqlens.detach().to("cpu", torch.int64)
        self._mb_loss_scale = loss_scale

    def reset(self) -> None:
        """Forget everything captured so far (the hooks stay)."""
        self._calls = {n: 0 for n in self._layers}
        self._proj: dict[str, dict[int, torch.Tensor]] = {n: {} for n in self._layers}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> "GradientCapture":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def projections(self, name: str, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(P_in, P_out) of this rank's shard of layer ``name`` (cached per device)."""
        key = (name, str(device))
        if key not in self._proj_cache and name in self._custom:
            p_in, p_out = self._custom[name]
            self._proj_cache[key] = (p_in.to(device or "cpu"), p_out.to(device or "cpu"))
        if key not in self._proj_cache:
            L = self._layers[name]
            self._proj_cache[key] = layer_projections(
                self.seed, name, self.k_in, self.k_out, L.d_in, L.d_out, L.in_ranges, L.out_ranges,
                dtype=self.projection_dtype, device=device or "cpu")
        return self._proj_cache[key]

    def set_projections(self, name: str, p_in: torch.Tensor, p_out: torch.Tensor) -> None:
        """Use given full (TP=1 layout) factors for layer ``name`` instead of the seeded random ones,
        e.g. data-aware factors (the reference gradient's singular vectors). Each rank keeps the
        columns of its own shard, so partial projections still sum to the TP=1 result."""
        L = self._layers[name]
        if p_in.shape[1] != L.d_in or p_out.shape[1] != L.d_out:
            raise ValueError(f"{name}: factors must be (k_in, {L.d_in}) and (k_out, {L.d_out}), "
                             f"got {tuple(p_in.shape)} and {tuple(p_out.shape)}")
        local_in = torch.cat([p_in[:, o:o + n] for o, n in L.in_ranges], dim=1)
        local_out = torch.cat([p_out[:, o:o + n] for o, n in L.out_ranges], dim=1)
        self._custom[name] = (local_in.to(self.projection_dtype).contiguous(),
                              local_out.to(self.projection_dtype).contiguous())
        self._proj_cache = {k: v for k, v in self._proj_cache.items() if k[0] != name}

    def set_local_projections(self, name: str, p_in: torch.Tensor, p_out: torch.Tensor) -> None:
        """Use factors given directly for this rank's shard (k_in, local d_in) / (k_out, local d_out),
        e.g. the singular vectors of the rank's own shard of a reference gradient."""
        L = self._layers[name]
        d_in, d_out = sum(n for _, n in L.in_ranges), sum(n for _, n in L.out_ranges)
        if p_in.shape[1] != d_in or p_out.shape[1] != d_out:
            raise ValueError(f"{name}: local factors must be (k_in, {d_in}) and (k_out, {d_out}), "
                             f"got {tuple(p_in.shape)} and {tuple(p_out.shape)}")
        self._custom[name] = (p_in.to(self.projection_dtype).contiguous(),
                              p_out.to(self.projection_dtype).contiguous())
        self._proj_cache = {k: v for k, v in self._proj_cache.items() if k[0] != name}

    # ------------------------------------------------------------------------------------- hooks
    def _forward_hook(self, name: str):
        def hook(module, args, kwargs, output):
            out = output[0] if isinstance(output, tuple) else output
            if not self.active:
                return
            if not (torch.is_grad_enabled() and isinstance(out, torch.Tensor) and out.requires_grad):
                return  # no backward will come (eval / no_grad forward)
            x = args[0] if args else kwargs.get("input_", kwargs.get("input"))
            idx = self._calls[name]
            self._calls[name] = idx + 1
            L = self._layers[name]
            cu = self._cu if self._cu is not None else L.default_cu(x)
            scale = self._mb_loss_scale if self._mb_loss_scale is not None else self.loss_scale
            x = x.detach()
            out.register_hook(lambda grad: self._on_grad(name, idx, x, grad, cu, scale))
        return hook

    def _on_grad(self, name: str, idx: int, x: torch.Tensor, grad: torch.Tensor, cu, scale) -> None:
        L = self._layers[name]
        # [s, b, h] tensors go to the kernel as they are (strided reads, no reorder copy); flat
        # nn.Linear inputs are viewed as (N, d).
        xt, gt = L.tokens(x, L.x_slice), L.tokens(grad.detach(), L.g_slice)
        p_in, p_out = self.projections(name, xt.device)
        ref = self._score_ref.get(name) if self._score_ref is not None else None
        if self._score_ref is not None and ref is None:
            return  # scoring against a reference that does not involve this layer
        if ref is not None:  # one scalar per document: sum_t v_t^T R u_t, no k x k output
            res = per_sample_score(xt, gt, cu, p_in, p_out, ref.to(xt.device), backend=self.backend,
                                   deterministic=self.deterministic)
        else:
            res = per_sample_projection(xt, gt, cu, p_in, p_out, backend=self.backend,
                                        deterministic=self.deterministic)
        if scale != 1.0:
            res = res / scale
        self._store(name, idx, res)

    def _store(self, name: str, idx: int, res: torch.Tensor) -> None:
        prev = self._proj[name].get(idx)
        self._proj[name][idx] = res if prev is None else prev + res

    # ----------------------------------------------------------------------------------- results
    def _collect(self, store: dict, name: str) -> list:
        have, want = sorted(store[name]), list(range(self._calls[name]))
        if have != want:
            raise RuntimeError(
                f"layer {name!r}: {self._calls[name]} forward calls but gradients for "
                f"{len(have)}; run backward for every forward (or reset()) before reading results")
        return [store[name][i] for i in want]

    def _reduce(self, name: str, t: torch.Tensor, reduce_tp: bool) -> torch.Tensor:
        L = self._layers[name]
        if reduce_tp and L.tp_size > 1:
            dist.all_reduce(t, group=L.tp_group)
        return t

    def results(self, reduce_tp: bool = True) -> dict[str, torch.Tensor]:
        """Layer name -> float32 (n_docs, k_out, k_in), documents of all forward calls in order.

        With ``reduce_tp`` the partial projections of TP-sharded layers are summed over their TP
        group (a collective: call it on every TP rank).
        """
        if self._score_ref is not None:
            raise RuntimeError("results() is not kept while scoring (set_score_reference); use scores()")
        out = {}
        for name in self.layer_names:
            parts = self._collect(self._proj, name)
            if not parts:
                continue
            out[name] = self._reduce(name, torch.cat(parts, dim=0), reduce_tp)
        return out

    def set_score_reference(self, ref_proj: dict[str, torch.Tensor] | None) -> None:
        """Score while capturing: from now on each backward keeps, per layer in ``ref_proj``, only
        the (n_docs,) scores ``<Ĝ_b, ref_proj[name]>`` (the kernel's score variant, no k x k
        per-document output). None: back to keeping the projections. Clears what was captured."""
        self._score_ref = None if ref_proj is None else {n: r.float() for n, r in ref_proj.items()}
        self.reset()

    def scores(self, ref_proj: dict[str, torch.Tensor] | None = None, reduce_tp: bool = True):
        """Layer name -> (n_docs,) ``<Ĝ_b, ref_proj[name]>`` for the layers in ``ref_proj``.

        While scoring (``set_score_reference``) the captured scores are returned and ``ref_proj``
        must be None or the same reference. Partial TP scores are summed over the TP group
        (``<sum_r Ĝ_r, R> = sum_r <Ĝ_r, R>``)."""
        if self._score_ref is not None:
            out = {}
            for name in self._score_ref:
                parts = self._collect(self._proj, name) if name in self._proj else []
                if parts:
                    out[name] = self._reduce(name, torch.cat(parts, dim=0), reduce_tp)
            return out
        res = self.results(reduce_tp=reduce_tp)
        return {n: torch.einsum("boi,oi->b", res[n], r.to(res[n])) for n, r in ref_proj.items()
                if n in res}
