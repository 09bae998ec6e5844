"""`synpro report RUN_DIR [--baseline RUN_DIR]`: RUN_DIR/report/report.md plus PNG figures.

The report is rebuilt from files alone (a finished, running or copied-back cluster run), and
every number in it is read from the run's own logs:

    metrics.jsonl                      eval/train curves, final losses and tokens
    loop_log.jsonl, state.json         plateau decisions, refreshes (rounds blended in)
    blend schedule                     state.json's `blend_schedule`, else blend_schedule.json, else
                                       the newest blend/schedule_round_K.json
    reward_log.jsonl per round/kind    rounds/round_K/generators/KIND/ (paths: synpro_megatron.rundir)
    synthetic/manifest.json,           synthetic documents per round/kind (counts also from the
    synthetic/round_K/KIND.{idx,provenance.jsonl}   .idx header); example triples with rewards
    eval_mc.jsonl                      multiple-choice accuracies (`synpro eval`)

A section whose inputs are missing (a repetition baseline has no rounds) or unreadable says so in
the report; the rest is still written. Given a demo dir holding synpro/ and repetition/ run
dirs, the report compares the two and goes to DEMO_DIR/report/.
"""
from __future__ import annotations

import glob
import math
import os
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

from synpro_megatron.eval import plots
from synpro_megatron.rundir import RunDir
from synpro_megatron.eval.runlogs import (blend_mix, check_schedule_json, indexed_counts, is_number, load_run,
                                          loss_events, manifest_entries, numpy_window_lengths, read_json, read_jsonl,
                                          rewards_of, source_id, source_text, synthetic_text, valid_mc_record,
                                          write_text_atomic)

REPORT_DIR = "report"
TEXT_CHARS = 240  # characters of each text shown in the examples table
NUM_EXAMPLES = 3
FIGURES = ("loss_curves.png", "blend_mix.png", "rl_rewards.png", "mc_accuracy.png")


class SectionMissing(Exception):
    """A report section has no inputs; the message says which."""


# ------------------------------------------------------------------------------------------ formatting
def fmt_loss(v: float) -> str:
    return f"{v:.4f}"


def fmt_tokens(v: float) -> str:
    return f"{int(round(v)):,}"


def fmt_rate(v: float) -> str:
    return f"{v:.4f}"


def md_cell(text: str, limit: Optional[int] = None) -> str:
    text = " ".join(str(text).split())  # newlines and runs of spaces would break the table row
    if limit and len(text) > limit:
        text = text[:limit].rstrip() + " …"
    return text.replace("|", "\\|")


def md_table(header: List[str], rows: List[List[str]]) -> List[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


# ------------------------------------------------------------------------------------------ report
class ReportBuilder:
    def __init__(self, run_dir: str, baseline_dir: Optional[str] = None, out_dir: Optional[str] = None):
        self.run = load_run(run_dir, "synpro")
        self.base = load_run(baseline_dir, "repetition") if baseline_dir else None
        self.out_dir = out_dir or RunDir(run_dir).report_dir
        self.plots: List[str] = []
        self.notes: List[str] = []  # inputs that were missing or unreadable, per section
        self.gate_summary: Optional[float] = None
        self.synthetic_docs: Optional[int] = None
        self.mc: Dict[str, List[dict]] = {}
        self.manifest: Dict[Tuple[int, str], dict] = {}

    # -------------------------------------------------------------------------------- sections
    def _figure(self, name: str) -> str:
        return os.path.join(self.out_dir, name)

    def _plot(self, name: str, fn, *args, **kwargs) -> str:
        fn(*args, out=self._figure(name), **kwargs)
        self.plots.append(name)
        return f"![{name}]({name})"

    def section_losses(self) -> List[str]:
        runs = [r for r in (self.run, self.base) if r is not None]
        if not any(r.evals for r in runs):
            raise SectionMissing(f"no eval records in {self.run.path('metrics.jsonl')}")
        events = loss_events(self.run)
        data = OrderedDict((r.label, {m: r.series(m) for m in ("heldout_loss", "reference_loss")}) for r in runs)
        lines = [self._plot("loss_curves.png", plots.plot_loss_curves, data, events), ""]
        if events:
            lines += ["Plateau decisions and refreshes (from `loop_log.jsonl` / `state.json`):", ""]
            lines += md_table(["event", "round", "step", "tokens", "detail"],
                              [[e["kind"], str(e["round"]) if e["round"] is not None else "—",
                                str(e["step"]) if e["step"] is not None else "—", fmt_tokens(e["tokens"]),
                                md_cell(e["detail"], 160)] for e in events])
        else:
            lines.append(f"No plateau or refresh events: {self.run.path('loop_log.jsonl')} has none "
                         f"(or is missing).")
        return lines

    def schedule_path(self) -> Optional[str]:
        st = self.run.state or {}
        cands = []
        if st.get("blend_schedule"):
            p = st["blend_schedule"]
            cands.append(p if os.path.isabs(p) else self.run.path(p))
        cands.append(self.run.path("blend_schedule.json"))
        rounds = glob.glob(RunDir(self.run.run_dir).blend_schedule("*"))
        cands += sorted(rounds, key=lambda p: -int(re.findall(r"(\d+)", os.path.basename(p))[-1]))
        return next((p for p in cands if os.path.exists(p)), None)

    def section_blend(self) -> List[str]:
        path = self.schedule_path()
        if path is None:
            raise SectionMissing(f"no blend schedule (state.json field 'blend_schedule', "
                                 f"{self.run.path('blend_schedule.json')} or blend/schedule_round_K.json): "
                                 f"the run trained on organic data only")
        self.run.read.append(path)
        raw = read_json(path)
        check_schedule_json(raw, path)
        last = self.run.last_record()
        consumed = last.get("consumed_samples") if last else None
        tps = self.run.tokens_per_sample()
        starts = [p.get("start", 0) for p in raw.get("phases", [])]
        num_samples = int(consumed) if is_number(consumed) and consumed > 0 else int(max(starts + [1]) * 1.25) + 1
        # ~60 windows: a window's realized share is quantised to 1/window, so small runs need wide ones
        window = max(1, math.ceil(num_samples / 60))
        sources, target, realized = blend_mix(raw, path, num_samples, window)
        shown = realized if realized is not None else target
        win_starts = [w * window for w in range(shown.shape[0])]
        scale = tps if tps else 1.0  # x axis in tokens; in samples when the metrics give no tokens
        lines = [f"Schedule: `{os.path.relpath(path, self.run.run_dir)}`, {len(raw['phases'])} phase(s) over "
                 f"{len(sources)} source(s); mix shown over the run's {fmt_tokens(num_samples)} samples in windows of "
                 f"{fmt_tokens(window)}" + ("" if realized is not None else " (schedule target; indices not built)"),
                 "", self._plot("blend_mix.png", plots.plot_blend_mix, [s * scale for s in win_starts], shown,
                                sources, target=target if realized is not None else None,
                                boundaries=[s * scale for s in starts[1:]], realized=realized is not None), ""]
        rows = []
        for i, p in enumerate(raw["phases"]):
            w = ", ".join(f"{k} {v:g}" for k, v in p["weights"].items())
            if p.get("end_weights"):
                w += " → " + ", ".join(f"{k} {v:g}" for k, v in p["end_weights"].items())
            rows.append([str(i), fmt_tokens(p["start"]), fmt_tokens(p["start"] * tps) if tps else "—", md_cell(w)])
        lines += md_table(["phase", "start sample", "start tokens", "weights"], rows)
        if realized is not None:
            counts = (realized * numpy_window_lengths(num_samples, window)[:, None]).sum(axis=0)
            lines += ["", "Share of the run's samples per source: " + ", ".join(
                f"{s} {100 * c / num_samples:.2f}%" for s, c in zip(sources, counts)) + "."]
        return lines

    def reward_logs(self) -> "OrderedDict[str, Tuple[str, List[dict]]]":
        """label -> (path, records) of the reward_log.jsonl of every generator trained in the run."""
        out = OrderedDict()
        for k, kind, folder in RunDir(self.run.run_dir).generators():
            p = os.path.join(folder, "reward_log.jsonl")
            if os.path.exists(p):
                out[f"round {k} {kind}"] = (p, read_jsonl(p))
                self.run.read.append(p)
        return out

    def section_rl(self) -> List[str]:
        logs = self.reward_logs()
        if not logs:
            raise SectionMissing(f"no reward_log.jsonl under {self.run.path('rounds')} "
                                 f"(no generator was trained in this run)")
        logs = OrderedDict((k, v) for k, v in logs.items() if v[1])
        if not logs:
            raise SectionMissing("reward logs exist but hold no records yet")
        lines = [self._plot("rl_rewards.png", plots.plot_reward_curves, {k: v[1] for k, v in logs.items()}), ""]
        rows, finals = [], []
        for label, (path, recs) in logs.items():
            keys = list(dict.fromkeys(k for r in recs for k, v in r.items()
                                      if k not in plots.NOT_PLOTTED and is_number(v)))
            combined = next((k for k in keys if "combined" in k), None)
            gate = next((k for k in keys if "gate" in k), None)
            values = [r[combined] for r in recs if combined and is_number(r.get(combined))]
            gates = [r[gate] for r in recs if gate and is_number(r.get(gate))]
            if gates:
                finals.append(gates[-1])
            last_step = recs[-1].get("step")
            rows.append([label, str(last_step) if is_number(last_step) else str(len(recs)),
                         fmt_rate(values[0]) if values else "—", fmt_rate(values[-1]) if values else "—",
                         fmt_rate(gates[-1]) if gates else "—", fmt_rate(sum(gates) / len(gates)) if gates else "—"])
        lines += md_table(["generator", "GRPO steps", "combined reward, first", "combined reward, final",
                           "final gate pass rate", "mean gate pass rate"], rows)
        if finals:
            self.gate_summary = sum(finals) / len(finals)
        return lines

    def provenance_files(self) -> List[Tuple[int, str, str]]:
        return RunDir(self.run.run_dir).synthetic_files(".provenance.jsonl")

    def section_synthetic(self) -> List[str]:
        manifest_path = RunDir(self.run.run_dir).manifest
        self.manifest = manifest_entries(read_json(manifest_path), manifest_path) if os.path.exists(manifest_path) else {}
        if self.manifest:
            self.run.read.append(manifest_path)
        prov = {}
        for k, kind, p in self.provenance_files():
            prov[(k, kind)] = read_jsonl(p)
            self.run.read.append(p)
        indexed = {}
        for k, kind, p in RunDir(self.run.run_dir).synthetic_files(".idx"):
            counts = indexed_counts(p)
            if counts is not None:
                indexed[(k, kind)] = counts
                self.run.read.append(p)
        if not self.manifest and not prov and not indexed:
            raise SectionMissing(f"no {manifest_path}, no synthetic/round_K/KIND.provenance.jsonl and no readable "
                                 f"synthetic/round_K/KIND.idx")
        rows, total = [], 0
        for key in sorted(set(self.manifest) | set(prov) | set(indexed)):
            m, idx, recs = self.manifest.get(key, {}), indexed.get(key, {}), prov.get(key)
            docs = next((v for v in (m.get("documents"), idx.get("docs"), len(recs) if recs is not None else None)
                         if is_number(v)), None)
            tokens = next((v for v in (m.get("tokens"), idx.get("tokens")) if is_number(v)), None)
            sources = m.get("sources") if is_number(m.get("sources")) else (
                len({source_id(r) for r in recs if source_id(r) is not None}) if recs else None)
            dropped = m.get("dropped") if is_number(m.get("dropped")) else None
            kept = f"{docs / sources:.4f}" if docs is not None and sources and dropped is not None else "—"
            total += docs or 0
            rows.append([str(key[0]), key[1], fmt_tokens(docs) if docs is not None else "—",
                         fmt_tokens(sources) if sources is not None else "—",
                         fmt_tokens(dropped) if dropped is not None else "—", kept,
                         fmt_tokens(tokens) if tokens is not None else "—"])
        self.synthetic_docs = total
        lines = md_table(["round", "kind", "synthetic documents", "source documents", "dropped by the gate",
                          "kept share", "tokens"], rows)
        lines += ["", "Counts from `synthetic/manifest.json` where it has them, else the dataset's .idx header, "
                      "else the provenance records (source documents: distinct source ids there).", ""]
        lines += ["### Examples", ""] + (self.examples(prov) if prov else ["No provenance records; no examples."])
        return lines

    def examples(self, prov: Dict[Tuple[int, str], List[dict]]) -> List[str]:
        by_source: "OrderedDict[Tuple[int, str], Dict[str, dict]]" = OrderedDict()
        for (k, kind), recs in sorted(prov.items()):
            for r in recs:
                sid = source_id(r)
                if sid is not None:
                    by_source.setdefault((k, sid), {}).setdefault(kind, r)
        if not by_source:
            return ["No provenance record names its source document; no examples."]
        kinds = sorted({kind for d in by_source.values() for kind in d}, key=lambda s: (s != "rephrase", s))
        # sources with every kind first (full triples), in provenance order
        picked = sorted(by_source.items(), key=lambda kv: -len(kv[1]))[:NUM_EXAMPLES]
        texts = self.source_texts({sid for (_, sid), _ in picked})
        rows = []
        for (k, sid), per_kind in picked:
            src = next((source_text(r) for r in per_kind.values() if source_text(r)), None) or texts.get(sid)
            row = [str(k), md_cell(sid), md_cell(src, TEXT_CHARS) if src else "(source text not found)"]
            for kind in kinds:
                r = per_kind.get(kind)
                if r is None:
                    row.append("—")
                    continue
                text = synthetic_text(r) or self.synthetic_text_from_dataset(k, kind, r)
                rw = rewards_of(r)
                cell = md_cell(text, TEXT_CHARS) if text else "(text not recorded in provenance)"
                if rw:
                    cell += "<br>**" + ", ".join(f"{n} {v:.3f}" for n, v in rw.items()) + "**"
                row.append(cell)
            rows.append(row)
        return md_table(["round", "source id", "source"] + kinds, rows)

    def source_texts(self, ids) -> Dict[str, str]:
        """Source documents by id, read from the organic corpus named in the prepared data's meta."""
        for entry in self.manifest.values():  # the corpus synthesize read its sources from
            corpus = (entry.get("job") or {}).get("source")
            if isinstance(corpus, str) and os.path.exists(corpus):
                found = self._find_texts(corpus, "text", "id", ids)
                if found:
                    return found
        st = self.run.state or {}
        prefixes = []
        if st.get("data"):
            prefixes.append(st["data"] if os.path.isabs(st["data"]) else self.run.path(st["data"]))
        prefixes.append(RunDir(self.run.run_dir).organic_prefix)
        cfg = RunDir(self.run.run_dir).pretrain_config
        if os.path.exists(cfg):
            data = read_json(cfg).get("data")
            if data:
                prefixes.append(data)
        meta_path = next((p + ".meta.json" for p in prefixes if os.path.exists(p + ".meta.json")), None)
        if meta_path is None:
            return {}
        meta = read_json(meta_path)
        corpus = meta.get("input")
        if not corpus or not os.path.exists(corpus):
            self.notes.append(f"source texts: corpus {corpus!r} named in {meta_path} (field 'input') is not here")
            return {}
        return self._find_texts(corpus, meta.get("text_field", "text"), meta.get("id_field", "id"), ids)

    def _find_texts(self, corpus: str, text_field: str, id_field: str, ids) -> Dict[str, str]:
        from synpro_megatron.data.prepare import read_corpus

        found, want = {}, set(ids)
        for rec in read_corpus(corpus, text_field, id_field, on_error="skip"):
            if rec.doc_id in want:
                found[rec.doc_id] = rec.text
                if len(found) == len(want):
                    break
        self.run.read.append(corpus)
        return found

    def synthetic_text_from_dataset(self, k: int, kind: str, rec: dict) -> Optional[str]:
        """The synthetic document itself when provenance gives only its index in KIND.bin/.idx
        (what `synpro synthesize` writes), detokenised with the tokenizer the manifest names."""
        idx = next((rec[key] for key in ("synthetic_index", "index", "doc_index") if isinstance(rec.get(key), int)), None)
        prefix = RunDir(self.run.run_dir).synthetic_prefix(k, kind)
        if idx is None or not os.path.exists(prefix + ".idx"):
            return None
        try:
            from megatron.core.datasets.indexed_dataset import IndexedDataset

            from synpro_megatron.data.tokenizer import load_tokenizer

            tok = load_tokenizer(self.manifest.get((k, kind), {}).get("tokenizer"))
            dataset = IndexedDataset(prefix)
            # copy out before the dataset goes: its __del__ unmaps the buffer the item views
            ids = [int(t) for t in dataset[idx]]
            del dataset
            return tok.detokenize(ids[:-1] if ids and ids[-1] == tok.eod else ids)
        except Exception as e:  # noqa: BLE001 - an example cell is not worth failing the report for
            self.notes.append(f"examples: could not read document {idx} of {prefix}: {type(e).__name__}: {e}")
            return None

    def section_mc(self) -> List[str]:
        for run in (self.run, self.base):
            if run is None:
                continue
            p = RunDir(run.run_dir).eval_mc
            if os.path.exists(p):
                recs = [r for r in read_jsonl(p) if valid_mc_record(r)]
                if recs:
                    by_step = OrderedDict()
                    for r in sorted(recs, key=lambda r: r.get("step", 0)):
                        by_step[r.get("step")] = r
                    self.mc[run.label] = list(by_step.values())
                run.read.append(p)
            else:
                run.missing.append(p)
        if not self.mc:
            raise SectionMissing(f"no {RunDir(self.run.run_dir).eval_mc} (run `synpro eval --checkpoint RUN_DIR`)")
        lines = []
        if any(len(v) > 1 for v in self.mc.values()):
            lines += [self._plot("mc_accuracy.png", plots.plot_mc_accuracy, self.mc), ""]
        labels = list(self.mc)
        tasks = []
        for lab in labels:
            tasks += [t for t in self.mc[lab][-1]["tasks"] if t not in tasks]
        header = ["task"] + [f"{lab} acc / acc_norm (step {self.mc[lab][-1].get('step')})" for lab in labels]
        rows = []
        for t in tasks:
            row = [t]
            for lab in labels:
                v = self.mc[lab][-1]["tasks"].get(t)
                row.append(f"{v['acc']:.4f} / {v['acc_norm']:.4f} (n={v['n']})" if v else "—")
            rows.append(row)
        rows.append(["macro average"] + [f"{self.mc[lab][-1]['macro_acc']:.4f} / {self.mc[lab][-1]['macro_acc_norm']:.4f}"
                                         for lab in labels])
        return lines + md_table(header, rows)

    # -------------------------------------------------------------------------------- summary
    def rounds_done(self) -> Optional[int]:
        """Rounds whose synthetic data entered the blend (a round whose every rewrite failed the
        gate was built but changed nothing)."""
        refreshes = [e for e in loss_events(self.run) if e["kind"] == "refresh"]
        if refreshes:
            return sum(e["blended"] for e in refreshes)
        if self.run.state and is_number(self.run.state.get("rounds_done")):
            return int(self.run.state["rounds_done"])
        return 0 if self.run.loop_log else None

    def summary(self) -> List[str]:
        runs = [r for r in (self.run, self.base) if r is not None]
        rows = []

        def row(name, fn):
            rows.append([name] + [fn(r) for r in runs])

        def final(metric):
            def get(r):
                rec = r.final_eval(metric)
                return fmt_loss(rec[metric]) if rec else "—"
            return get

        def best(r):
            recs = [e for e in r.evals if is_number(e.get("reference_loss"))]
            if not recs:
                return "—"
            b = min(recs, key=lambda e: e["reference_loss"])
            return f"{fmt_loss(b['reference_loss'])} (step {b['step']})"

        row("final step", lambda r: str(r.last_record()["step"]) if r.last_record() else "—")
        row("training tokens", lambda r: fmt_tokens(r.last_record()["tokens"])
            if r.last_record() and is_number(r.last_record().get("tokens")) else "—")
        row("final held-out loss", final("heldout_loss"))
        row("final reference loss", final("reference_loss"))
        row("best reference loss", best)
        row("evaluations", lambda r: str(len(r.evals)))
        rounds = self.rounds_done()
        rows.append(["synthetic rounds blended in", str(rounds) if rounds is not None else "—"]
                    + (["—"] if self.base else []))
        rows.append(["synthetic documents", fmt_tokens(self.synthetic_docs) if self.synthetic_docs is not None else "—"]
                    + (["—"] if self.base else []))
        gate = fmt_rate(self.gate_summary) if self.gate_summary is not None else "—"
        rows.append(["final gate pass rate (mean over generators)", gate] + (["—"] if self.base else []))
        if self.mc:
            row("multiple-choice macro acc / acc_norm", lambda r: (
                f"{self.mc[r.label][-1]['macro_acc']:.4f} / {self.mc[r.label][-1]['macro_acc_norm']:.4f}"
                if r.label in self.mc else "—"))
        lines = md_table(["", *(r.label for r in runs)], rows)
        if self.base is not None:
            lines += [""] + self.comparison()
        return lines

    def comparison(self) -> List[str]:
        out = []
        for metric in ("reference_loss", "heldout_loss"):
            a, b = dict(self.run.series(metric)), dict(self.base.series(metric))
            common = sorted(set(a) & set(b))
            if common:
                t = common[-1]
                out.append(f"* {metric} at {fmt_tokens(t)} tokens (last evaluation both runs have): "
                           f"synpro {fmt_loss(a[t])}, repetition {fmt_loss(b[t])}, "
                           f"difference {a[t] - b[t]:+.4f}.")
        return out or ["* The two runs have no evaluation at the same token count to compare."]

    # -------------------------------------------------------------------------------- assembly
    def build(self) -> dict:
        os.makedirs(self.out_dir, exist_ok=True)
        sections = [("Evaluation loss over training", self.section_losses),
                    ("Blend mix", self.section_blend),
                    ("Generator RL", self.section_rl),
                    ("Synthetic data", self.section_synthetic),
                    ("Multiple-choice evaluation", self.section_mc)]
        bodies, status = [], {}
        for title, fn in sections:
            try:
                body = fn()
                status[title] = "ok"
            except SectionMissing as e:
                body, status[title] = [f"_Not available: {str(e).rstrip('.')}._"], "missing"
            except (OSError, ValueError) as e:  # unreadable input: say which, keep the rest of the report
                body, status[title] = [f"_Could not build this section: {str(e).rstrip('.')}._"], "error"
            bodies.append((title, body))
        base = f" vs `{self.base.run_dir}` (repetition)" if self.base else ""
        lines = [f"# SynPro report: {os.path.basename(os.path.abspath(self.run.run_dir))}", "",
                 f"Run `{self.run.run_dir}`{base}. Every number below is read from these runs' logs; "
                 f"regenerate with `synpro report`.", "", "## Summary", ""]
        lines += self.summary() + [""]
        for title, body in bodies:
            lines += [f"## {title}", ""] + body + [""]
        lines += ["## Inputs", ""]
        for run in (self.run, self.base):
            if run is None:
                continue
            lines.append(f"* {run.label}: read " + ", ".join(f"`{os.path.relpath(p, run.run_dir)}`"
                                                           for p in dict.fromkeys(run.read)) if run.read
                         else f"* {run.label}: no log files found in `{run.run_dir}`")
            if run.missing:
                lines.append("  (absent: " + ", ".join(f"`{os.path.relpath(p, run.run_dir)}`" for p in run.missing) + ")")
        lines += [f"* note: {n}" for n in self.notes]
        path = os.path.join(self.out_dir, "report.md")
        write_text_atomic(path, "\n".join(lines).rstrip() + "\n")
        for name in set(FIGURES) - set(self.plots):  # a figure of an earlier build whose inputs are gone
            stale = os.path.join(self.out_dir, name)
            if os.path.exists(stale):
                os.remove(stale)
        return {"report": path, "plots": [os.path.join(self.out_dir, p) for p in self.plots], "sections": status}


# ------------------------------------------------------------------------------------------ entry point
def resolve_target(run_dir: str, baseline: Optional[str]) -> Tuple[str, Optional[str], Optional[str]]:
    """(run dir, baseline dir, report dir). A demo dir (synpro/ + repetition/) compares the two."""
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    demo_run, demo_base = os.path.join(run_dir, "synpro"), os.path.join(run_dir, "repetition")
    if not os.path.exists(os.path.join(run_dir, "metrics.jsonl")) and os.path.isdir(demo_run):
        return demo_run, baseline or (demo_base if os.path.isdir(demo_base) else None), os.path.join(run_dir, REPORT_DIR)
    if baseline is not None and not os.path.isdir(baseline):
        raise FileNotFoundError(f"baseline run directory not found: {baseline}")
    return run_dir, baseline, None


def build_report(run_dir: str, baseline: Optional[str] = None, out_dir: Optional[str] = None) -> dict:
    """Write report.md and its figures; returns {"report", "plots", "sections": {title: ok|missing|error}}."""
    run, base, default_out = resolve_target(run_dir, baseline)
    return ReportBuilder(run, base, out_dir or default_out).build()
