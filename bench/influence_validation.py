"""Which influence score matches how the model trains? SGD vs Adam-preconditioned (LESS-style) scores
against the true reference-loss change of AdamW steps on each text, on a tiny checkpoint.

For each text: the text's effect = L_ref(after n AdamW steps with the text's gradient) minus
L_ref(after the same n steps with a zero gradient): the momentum already in the checkpoint's Adam
state moves the weights either way, and only the difference is the text's doing. The steps use the
checkpoint's own Adam state (m, v, step count), betas, eps and weight decay, on every hooked linear
weight (what the scores cover); the Adam moments are kept in float64. Predictions: exact first-order scores (mode="exact"), SGD and Adam, and the
default projected ones, and the SynPro paper's probe influence: fine-tune a copy of the checkpoint on
the reference set (--probe-steps AdamW steps at --probe-lr, fresh Adam state, as its
probe-influence-train config: 100 steps at 1e-4) and score each text by its loss before minus after.
Prints Pearson and Spearman correlations against the truth, and of each predictor with the probe.

    python bench/influence_validation.py --checkpoint RUN/checkpoints/iter_N [--texts 24 --lr 1e-3 --steps 1 3]
"""
from __future__ import annotations

import argparse
import gzip
import json

import torch

from synpro_megatron.cli import quiet_optional_dependency_warnings


def pearson(a, b):
    return torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1].item()


def spearman(a, b):
    return pearson(a.argsort().argsort().double(), b.argsort().argsort().double())


def adam_state(checkpoint, names, vocab):
    """Layer name -> (m, v) of the checkpoint's Adam, plus (beta1, beta2, eps, weight decay, step)."""
    import dataclasses

    from synpro_megatron.influence.hooks import canonical_layer_name
    from synpro_megatron.pretrain.checkpoint import load_checkpoint, resolve_checkpoint
    from synpro_megatron.pretrain.inference import run_config_for_checkpoint
    from synpro_megatron.pretrain.trainer import build_model_and_optimizer

    path = resolve_checkpoint(checkpoint)
    cfg = dataclasses.replace(run_config_for_checkpoint(path), tp=1, pp=1)
    gpt, _, opt, _, _ = build_model_and_optimizer(cfg, vocab)
    step = int(load_checkpoint(path, gpt, opt, None).get("step", 0))
    inner = getattr(opt, "optimizer", opt)
    group = inner.param_groups[0]
    out = {}
    for module_name, module in gpt.named_modules():
        name = canonical_layer_name(gpt, module_name)
        if name in names:
            st = inner.state[module.weight]
            out[name] = (st["exp_avg"].double().clone(), st["exp_avg_sq"].double().clone())
    return out, (group["betas"][0], group["betas"][1], group["eps"], cfg.weight_decay, step)


def main():
    quiet_optional_dependency_warnings()
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--texts", type=int, default=24)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, nargs="+", default=[1, 3])
    p.add_argument("--ref-docs", type=int, default=16)
    p.add_argument("--probe-steps", type=int, default=100)
    p.add_argument("--probe-lr", type=float, default=1e-4)
    args = p.parse_args()

    from synpro_megatron.influence.probe import InfluenceProbe
    from synpro_megatron.pretrain.data import DEFAULT_WEB_SAMPLE

    with gzip.open(DEFAULT_WEB_SAMPLE, "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"][:400] for line in f][600:600 + args.texts]
    common = dict(max_ref_docs=args.ref_docs, lr=args.lr, cache=False)
    preds = {}
    for name, kw in {"exact-sgd": {"mode": "exact"}, "exact-adam": {"mode": "exact", "optimizer": "adam"},
                     "projected-sgd": {}, "projected-adam": {"optimizer": "adam"}}.items():
        probe = InfluenceProbe(args.checkpoint, **common, **kw)
        preds[name] = probe.score(texts)
        if name != "exact-sgd":
            probe.close()
        else:
            keep = probe
    probe = keep
    layers = {name: layer.module.weight for name, layer in probe._layers()}
    state, (b1, b2, eps, wd, step0) = adam_state(args.checkpoint, set(layers), probe.tokenizer.vocab_size)
    w0 = {n: w.detach().clone() for n, w in layers.items()}

    def adamw_steps(n, backward, m, v, lr, t0):
        """n AdamW steps on the hooked weights, each on the gradient `backward()` leaves (none: a
        zero gradient), from moments m, v (float64, updated in place) at step count t0."""
        for i in range(n):
            probe._zero_param_grads()
            backward()
            t = t0 + i + 1
            with torch.no_grad():
                for k, w in layers.items():
                    g = w.grad.double() if w.grad is not None else torch.zeros_like(m[k])
                    m[k].mul_(b1).add_(g, alpha=1 - b1)
                    v[k].mul_(b2).addcmul_(g, g, value=1 - b2)
                    upd = (m[k] / (1 - b1 ** t)) / ((v[k] / (1 - b2 ** t)).sqrt() + eps)
                    w.mul_(1 - lr * wd).sub_(lr * upd)

    def restore():
        with torch.no_grad():
            for k, w in layers.items():
                w.copy_(w0[k])
        probe._zero_param_grads()

    def run_steps(text, n):
        """n AdamW steps on `text` (None: zero gradient) from the checkpoint's own Adam state;
        returns the reference loss after them."""
        m = {k: v[0].clone() for k, v in state.items()}
        v = {k: v[1].clone() for k, v in state.items()}
        adamw_steps(n, lambda: text is not None and probe.backward_texts([text]), m, v, args.lr, step0)
        loss = probe.reference_loss()
        restore()
        return loss

    def text_losses():
        """Mean per-token loss of each text (the probe's loss over a one-document reference set)."""
        reference, out = probe.reference_texts, []
        try:
            for t in texts:
                probe.reference_texts = [t]
                out.append(probe.reference_loss())
        finally:
            probe.reference_texts = reference
        return torch.tensor(out, dtype=torch.float64)

    def paper_probe_influence():
        """Loss of each text before minus after fine-tuning on the reference set (SynPro's probe):
        a fresh AdamW, as the paper's probe training starts one."""
        before = text_losses()
        m = {k: torch.zeros_like(w0[k], dtype=torch.float64) for k in layers}
        v = {k: torch.zeros_like(w0[k], dtype=torch.float64) for k in layers}
        n_ref = len(probe.reference_texts)
        adamw_steps(args.probe_steps, lambda: probe.backward_texts(probe.reference_texts, [1.0 / n_ref] * n_ref),
                    m, v, args.probe_lr, 0)
        after = text_losses()
        restore()
        return before - after

    preds["paper probe"] = paper_probe_influence()
    print(f"checkpoint {args.checkpoint} (step {step0}), {len(texts)} texts, lr {args.lr}, "
          f"{args.ref_docs} reference documents (stratified)")
    print(f"paper probe: {args.probe_steps} AdamW steps at lr {args.probe_lr} on the reference set")
    print("| predictor | " + " | ".join(f"Pearson / Spearman vs AdamW x{n}" for n in args.steps)
          + " | Pearson / Spearman vs paper probe |")
    print("| --- |" + " ---: |" * (len(args.steps) + 1))
    truth = {}
    for n in args.steps:
        base = run_steps(None, n)
        truth[n] = torch.tensor([base - run_steps(t, n) for t in texts], dtype=torch.float64)
    for name, pred in preds.items():
        cells = [f"{pearson(pred, truth[n]):.2f} / {spearman(pred, truth[n]):.2f}" for n in args.steps]
        cells.append(f"{pearson(pred, preds['paper probe']):.2f} / {spearman(pred, preds['paper probe']):.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
