"""Projection matrices and GradientCapture hooks vs per-document autograd gradients.

The oracle for every hook test: run each document on its own through the same weights, take the
layer's weight gradient G_b from autograd and project it, P_out G_b P_in^T (float64).
"""
import contextlib
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from synpro_megatron.influence import hooks as hooks_mod
from synpro_megatron.influence.hooks import GradientCapture, canonical_layer_name
from synpro_megatron.influence.projections import (
    COLUMN_BLOCK,
    layer_projections,
    projection_matrix,
)
from synpro_megatron.kernels import per_sample_projection


def rel_err(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm()) if b.norm() > 0 else float(a.norm())


def cu_of(lengths):
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int32), 0)
    return cu


# ------------------------------------------------------------------------------ projection matrices
def test_projection_shards_concatenate_exactly():
    full = projection_matrix(7, "decoder.layers.3.mlp.linear_fc1/in", 12, 200)
    assert full.shape == (12, 200) and full.dtype == torch.float32
    for bounds in ([0, 100, 200], [0, 37, 64, 130, 200], [0, 1, 63, 65, 199, 200]):
        shards = [projection_matrix(7, "decoder.layers.3.mlp.linear_fc1/in", 12, 200, lo, hi - lo)
                  for lo, hi in zip(bounds[:-1], bounds[1:])]
        assert torch.equal(torch.cat(shards, dim=1), full)
    # deterministic across calls, different for another name / seed / k
    assert torch.equal(projection_matrix(7, "decoder.layers.3.mlp.linear_fc1/in", 12, 200), full)
    assert not torch.equal(projection_matrix(7, "decoder.layers.2.mlp.linear_fc1/in", 12, 200), full)
    assert not torch.equal(projection_matrix(8, "decoder.layers.3.mlp.linear_fc1/in", 12, 200), full)
    # N(0, 1/k): E[P^T P] = I
    big = projection_matrix(0, "stats", 64, 4 * COLUMN_BLOCK)
    assert abs(float((big ** 2).mean()) * 64 - 1.0) < 0.05
    assert projection_matrix(0, "stats", 8, 10, dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="outside"):
        projection_matrix(0, "x", 4, 10, 8, 3)
    with pytest.raises(ValueError, match="layer_name"):
        projection_matrix(0, "", 4, 10)


def test_layer_projections_sharded_sum_equals_full():
    """The TP identity the hooks rely on, at the kernel level (Row shards d_in, Column d_out)."""
    gen = torch.Generator().manual_seed(0)
    d_in, d_out, k_in, k_out = 70, 90, 8, 6
    x, g = torch.randn(40, d_in, generator=gen), torch.randn(40, d_out, generator=gen)
    cu = cu_of([10, 0, 25, 5])
    p_in, p_out = layer_projections(3, "L", k_in, k_out, d_in, d_out)
    full = per_sample_projection(x, g, cu, p_in, p_out)
    row = sum(per_sample_projection(x[:, o:o + s], g, cu, *layer_projections(
        3, "L", k_in, k_out, d_in, d_out, in_ranges=[(o, s)])) for o, s in [(0, 37), (37, 33)])
    col = sum(per_sample_projection(x, g[:, o:o + s], cu, *layer_projections(
        3, "L", k_in, k_out, d_in, d_out, out_ranges=[(o, s)])) for o, s in [(0, 45), (45, 45)])
    assert rel_err(row, full) <= 1e-6 and rel_err(col, full) <= 1e-6


def test_strided_shard_ranges(monkeypatch):
    """SwiGLU fc1 (partition_stride 2) at TP=2: rank 1 holds rows [3:6] (gate) and [9:12] (up)."""
    module = nn.Module()
    module.weight = nn.Parameter(torch.zeros(6, 4))
    module.weight.partition_stride = 2
    monkeypatch.setattr(hooks_mod, "_tp_rank_size", lambda m, local, full: (1, 2))
    ranges, rank, size = hooks_mod._shard_ranges(module, 6, 12)
    assert (ranges, rank, size) == ([(3, 3), (9, 3)], 1, 2)
    # Same rows as megatron's _initialize_affine_weight_cpu gives rank 1 of a stride-2 weight.
    master = torch.arange(12)
    mine = torch.cat(torch.split(master, 3)[1::2])
    assert torch.equal(mine, torch.cat([master[o:o + s] for o, s in ranges]))


def test_canonical_layer_name_uses_global_layer_number():
    class Layer(nn.Module):
        def __init__(self, layer_number):
            super().__init__()
            self.layer_number = layer_number  # megatron: 1-based and already offset by PP stage
            self.fc = nn.Linear(2, 2)

    class Stage(nn.Module):  # pipeline stage 1 of PP=2 holding global layers 3 and 4
        def __init__(self):
            super().__init__()
            self.decoder = nn.Module()
            self.decoder.layers = nn.ModuleList([Layer(3), Layer(4)])

    wrapped = nn.Module()
    wrapped.module = Stage()  # DDP-style wrapper
    assert canonical_layer_name(wrapped, "module.decoder.layers.0.fc") == "decoder.layers.2.fc"
    assert canonical_layer_name(wrapped, "module.decoder.layers.1.fc") == "decoder.layers.3.fc"
    with GradientCapture(wrapped) as cap:
        assert cap.layer_names == ["decoder.layers.2.fc", "decoder.layers.3.fc"]
    with pytest.raises(ValueError, match="no supported linear layer"):
        GradientCapture(wrapped, layers=["decoder.layers.0.fc"])


# ------------------------------------------------------------------------------ nn.Linear hooks
class TokenMLP(nn.Module):
    """Per-token model: documents do not interact, so per-document gradients are well defined."""

    def __init__(self, d0=10, d1=24, d2=7):
        super().__init__()
        self.up = nn.Linear(d0, d1)
        self.down = nn.Linear(d1, d2, bias=False)

    def forward(self, x):
        return self.down(torch.tanh(self.up(x)))


def per_token_loss(y, target):
    return 0.5 * ((y - target) ** 2).sum(dim=-1)


def per_doc_projected_grads(model, cap, x, target, lengths):
    """Oracle: float64 copy of the model, one backward per document, projected with cap's matrices."""
    ref = TokenMLP(model.up.in_features, model.up.out_features, model.down.out_features).double()
    ref.load_state_dict(model.state_dict())
    out = {n: [] for n in cap.layer_names}
    start = 0
    for n in lengths:
        ref.zero_grad()
        per_token_loss(ref(x[start:start + n].double()), target[start:start + n].double()).sum().backward()
        for name in cap.layer_names:
            p_in, p_out = cap.projections(name)
            G = ref.get_submodule(name).weight.grad
            G = torch.zeros_like(ref.get_submodule(name).weight) if G is None else G
            out[name].append(p_out.double() @ G @ p_in.double().T)
        start += n
    return {name: torch.stack(v) for name, v in out.items()}


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_linear_hooks_match_per_document_autograd(backend):
    torch.manual_seed(0)
    model = TokenMLP()
    lengths = [5, 0, 1, 12, 9]
    x, target = torch.randn(sum(lengths), 10), torch.randn(sum(lengths), 7)
    with GradientCapture(model, k_in=6, k_out=5, seed=11, backend=backend) as cap:
        assert cap.layer_names == ["down", "up"]
        cap.set_documents(cu_of(lengths))
        per_token_loss(model(x), target).sum().backward()
        res = cap.results()
    expected = per_doc_projected_grads(model, cap, x, target, lengths)
    for name in ("up", "down"):
        assert res[name].shape == (5, 5, 6) and res[name].dtype == torch.float32
        assert rel_err(res[name], expected[name]) <= 1e-5, name
        assert torch.count_nonzero(res[name][1]) == 0  # the empty document
    # hooks are gone after the context manager
    model.zero_grad()
    per_token_loss(model(x), target).sum().backward()
    assert cap.results()["up"].shape[0] == 5


def test_rows_as_documents_microbatches_and_loss_scale():
    torch.manual_seed(1)
    model = TokenMLP(8, 16, 5)
    x1, t1 = torch.randn(3, 4, 8), torch.randn(3, 4, 5)  # (b, s, d): 3 documents of 4 tokens
    x2, t2 = torch.randn(2, 4, 8), torch.randn(2, 4, 5)
    cap = GradientCapture(model, k_in=4, k_out=3)
    assert not hasattr(cap, "exact_scores")  # exact scoring lives in influence/exact.py
    loss = per_token_loss(model(x1), t1).sum() + per_token_loss(model(x2), t2).sum()
    with pytest.raises(RuntimeError, match="run backward"):
        cap.results()
    loss.backward()
    summed = cap.results()
    assert summed["up"].shape == (5, 3, 4)  # both micro-batches, in forward order
    x = torch.cat([x1, x2]).reshape(-1, 8)
    t = torch.cat([t1, t2]).reshape(-1, 5)
    expected = per_doc_projected_grads(model, cap, x, t, [4] * 5)
    for name in cap.layer_names:
        assert rel_err(summed[name], expected[name]) <= 1e-5
    # A mean-reduced loss gives the same results once its factor is declared.
    cap.remove()
    cap_mean = GradientCapture(model, k_in=4, k_out=3, loss_scale=1.0 / 12)
    per_token_loss(model(x1), t1).mean().backward()
    for name in cap_mean.layer_names:
        assert rel_err(cap_mean.results()[name], summed[name][:3]) <= 1e-5
    # per-micro-batch scales (e.g. Megatron's division by each micro-batch's token count)
    cap_mean.reset()
    cap_mean.set_documents(None, loss_scale=1.0 / 12)
    l1 = per_token_loss(model(x1), t1).mean()
    cap_mean.set_documents(None, loss_scale=1.0 / 8)
    (l1 + per_token_loss(model(x2), t2).mean()).backward()
    for name in cap_mean.layer_names:
        assert rel_err(cap_mean.results()[name], summed[name]) <= 1e-5
    cap_mean.reset()
    assert cap_mean.results() == {}
    cap_mean.remove()


def test_exact_mode_and_projected_scores():
    torch.manual_seed(2)
    model = TokenMLP(9, 20, 6)
    lengths = [7, 0, 11, 1]
    x, target = torch.randn(sum(lengths), 9), torch.randn(sum(lengths), 6)
    cu = cu_of(lengths)
    ref_grads = {"up": torch.randn(20, 9), "down": torch.randn(6, 20)}

    from synpro_megatron.influence.exact import ExactGradientCapture

    with ExactGradientCapture(model) as cap:
        cap.set_documents(cu)
        per_token_loss(model(x), target).sum().backward()
        exact = cap.exact_scores(ref_grads)
        with pytest.raises(ValueError, match="reference gradient must be"):
            cap.exact_scores({"up": torch.randn(9, 20)})
        with pytest.raises(RuntimeError, match="use exact_scores"):
            cap.results()
    # oracle: per-document full gradients, inner product with G_ref
    ref = TokenMLP(9, 20, 6).double()
    ref.load_state_dict(model.state_dict())
    want = {name: torch.zeros(len(lengths), dtype=torch.float64) for name in ref_grads}
    start = 0
    for b, n in enumerate(lengths):
        ref.zero_grad()
        per_token_loss(ref(x[start:start + n].double()), target[start:start + n].double()).sum().backward()
        for name, G_ref in ref_grads.items():
            G = ref.get_submodule(name).weight.grad
            if G is not None:
                want[name][b] = (G * G_ref.double()).sum()
        start += n
    for name in ref_grads:  # captured activations are fp32, the oracle float64
        assert exact[name].dtype == torch.float64 and rel_err(exact[name], want[name]) <= 1e-5
        assert exact[name][1] == 0

    with GradientCapture(model, k_in=5, k_out=4) as cap:
        cap.set_documents(cu)
        per_token_loss(model(x), target).sum().backward()
        ref_proj = {"up": torch.randn(4, 5)}
        s = cap.scores(ref_proj)
        assert list(s) == ["up"]
        want = torch.einsum("boi,oi->b", cap.results()["up"], ref_proj["up"])
        assert torch.allclose(s["up"], want)


# ------------------------------------------------------------------------- megatron-core layers
@pytest.fixture(scope="module")
def megatron_tp1():
    """One-process gloo group + TP=1/PP=1 megatron state, on the CPU compatibility shims."""
    from megatron.core import parallel_state as ps

    from synpro_megatron.pretrain.cpu_compat import cpu_mode, cpu_model_parallel_seed

    scope = contextlib.nullcontext() if torch.cuda.is_available() else cpu_mode()
    scope.__enter__()  # left at teardown: later tests must not run under the CUDA->CPU mode
    created_pg = not dist.is_initialized()
    if created_pg:
        store = tempfile.NamedTemporaryFile(prefix="synpro_gloo_", delete=False).name
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    created_mp = not ps.model_parallel_is_initialized()
    if created_mp:
        ps.initialize_model_parallel(1, 1)
    cpu_model_parallel_seed(1234)
    yield ps
    if created_mp:
        ps.destroy_model_parallel()
    if created_pg:
        dist.destroy_process_group()
    scope.__exit__(None, None, None)


def test_megatron_column_row_tp1(megatron_tp1):
    from megatron.core.model_parallel_config import ModelParallelConfig
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear

    torch.manual_seed(3)
    cfg = ModelParallelConfig(use_cpu_initialization=True, params_dtype=torch.float32)
    init = lambda w: nn.init.normal_(w, std=0.3)  # noqa: E731
    model = nn.Module()
    model.fc1 = ColumnParallelLinear(12, 20, config=cfg, init_method=init, bias=True,
                                     gather_output=False)
    model.fc2 = RowParallelLinear(20, 8, config=cfg, init_method=init, bias=True,
                                  input_is_parallel=True, skip_bias_add=False)
    s, b = 9, 2  # megatron layout [s, b, h]; documents span the packed (b, s) order
    x, target = torch.randn(s, b, 12), torch.randn(s, b, 8)
    lengths = [4, 0, 7, 6, 1]  # document 2 crosses from batch row 0 into row 1

    def forward(inp):
        h, _ = model.fc1(inp)
        y, _ = model.fc2(F.gelu(h))
        return y

    with GradientCapture(model, k_in=5, k_out=7, seed=5) as cap:
        assert cap.layer_names == ["fc1", "fc2"]
        cap.set_documents(cu_of(lengths))
        per_token_loss(forward(x), target).sum().backward()
        res = cap.results()

    # Oracle: float64 functional copy, one document at a time, tokens in packed (b, s) order.
    xt, tt = x.transpose(0, 1).reshape(-1, 12).double(), target.transpose(0, 1).reshape(-1, 8).double()
    W1, b1 = model.fc1.weight.detach().double(), model.fc1.bias.detach().double()
    W2, b2 = model.fc2.weight.detach().double(), model.fc2.bias.detach().double()
    start = 0
    for d, n in enumerate(lengths):
        w1, w2 = W1.clone().requires_grad_(), W2.clone().requires_grad_()
        y = F.gelu(xt[start:start + n] @ w1.T + b1) @ w2.T + b2
        per_token_loss(y, tt[start:start + n]).sum().backward()
        for name, w in (("fc1", w1), ("fc2", w2)):
            p_in, p_out = cap.projections(name)
            want = p_out.double() @ w.grad @ p_in.double().T
            assert rel_err(res[name][d], want) <= 1e-5, (name, d)
        start += n


def test_megatron_gpt_tp1_rows_as_documents(megatron_tp1):
    """Tiny megatron GPTModel (SwiGLU fc1 with partition_stride 2, QKV, output layer): each batch row
    is a document (causal attention keeps rows independent)."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_config import TransformerConfig

    torch.manual_seed(4)
    cfg = TransformerConfig(
        num_layers=2, hidden_size=32, num_attention_heads=2, ffn_hidden_size=48,
        normalization="RMSNorm", gated_linear_unit=True, activation_func=F.silu,
        add_bias_linear=False, qk_layernorm=True, hidden_dropout=0.0, attention_dropout=0.0,
        use_cpu_initialization=True, pipeline_dtype=torch.float32, init_method_std=0.2)
    model = GPTModel(config=cfg, vocab_size=64, max_sequence_length=16,
                     transformer_layer_spec=get_gpt_layer_local_spec(qk_layernorm=True,
                                                                     normalization="RMSNorm"),
                     share_embeddings_and_output_weights=False, position_embedding_type="rope")
    toks = torch.randint(0, 64, (3, 8))
    pos = torch.arange(8)[None].expand(3, 8)
    with GradientCapture(model, k_in=6, k_out=5, seed=9) as cap:
        assert "decoder.layers.1.mlp.linear_fc1" in cap.layer_names
        assert "output_layer" in cap.layer_names and len(cap.layer_names) == 9
        model(toks, pos, None, labels=toks).sum().backward()
        res = cap.results()
    for row in range(3):
        model.zero_grad()
        model(toks[row:row + 1], pos[row:row + 1], None, labels=toks[row:row + 1]).sum().backward()
        for name in cap.layer_names:
            p_in, p_out = cap.projections(name)
            G = model.get_submodule(name).weight.grad.double()
            want = p_out.double() @ G @ p_in.double().T
            assert rel_err(res[name][row], want) <= 1e-4, (name, row)


def test_cpu_mode_is_scoped():
    """cpu_mode() patches only inside its block: nothing leaks into later tests (issue 11)."""
    if torch.cuda.is_available():
        pytest.skip("cpu_compat is for machines without CUDA")
    from synpro_megatron.pretrain import cpu_compat

    before = torch.cuda.current_device
    was_enabled = cpu_compat.cpu_mode_enabled()
    with cpu_compat.cpu_mode():
        assert torch.zeros(2, device="cuda").device.type == "cpu"  # CUDA requests go to the CPU
        assert cpu_compat.cpu_mode_enabled()
    assert cpu_compat.cpu_mode_enabled() == was_enabled
    if not was_enabled:
        assert torch.cuda.current_device is before
        with pytest.raises((RuntimeError, AssertionError)):
            torch.zeros(2, device="cuda")
