"""Zero-shot multiple-choice evaluation of pretraining checkpoints (the OLMo/lm-eval-harness way).

Each example has a context and N choices; the model "answers" with the choice whose continuation
it finds most likely. Two scores per choice, both reported:

* ``acc``: raw sum of log p(choice tokens | context). Favours short choices.
* ``acc_norm``: the same sum divided by the choice's length in tokens (per-token log-likelihood),
  which removes most of the length bias. Scorers that cannot count tokens get UTF-8 bytes
  instead; the result's ``length_unit`` says which.

How the packaged ``reference_qa.jsonl`` becomes (context, continuation) pairs: a record's ``text``
is ``prompt + delimiter + answer``, so the delimiter is recovered from the record itself.
Normal tasks score ``prompt + delimiter`` followed by each choice. WinoGrande is the other way
round: the choices are the two *contexts* (the sentence up to the blank, filled in each way) and
the shared ``answer`` is the continuation scored after each. Trailing spaces of the delimiter move
to the front of the continuation (" Paris", not "Paris" after "Answer: "), as BPE tokenizers
attach a space to the following word.

A scorer is anything with ``loglik(contexts, continuations) -> list[float]``; one with
``num_tokens(contexts, continuations) -> list[int]`` also gets per-token normalisation.
``CheckpointScorer`` wraps a Megatron checkpoint.
"""
from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from importlib import resources
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from synpro_megatron.eval.runlogs import append_jsonl_atomic, write_text_atomic

# Tasks whose records carry choices + gold. gsm8k and lambada_openai are generation tasks.
MC_TASKS = ("boolq", "arc_easy", "arc_challenge", "openbookqa", "copa", "winogrande")
# Tasks whose choices are alternative contexts for one shared continuation.
CHOICE_IS_CONTEXT = ("winogrande",)


@dataclass(frozen=True)
class MCExample:
    id: str
    task: str
    requests: Tuple[Tuple[str, str], ...]  # one (context, continuation) per choice
    gold: int

    @property
    def num_choices(self) -> int:
        return len(self.requests)


def default_reference_path() -> str:
    return str(resources.files("synpro_megatron").joinpath("assets", "reference_qa.jsonl"))


def _split_delimiter(delim: str) -> Tuple[str, str]:
    """Context keeps the delimiter without trailing spaces; the continuation starts with them."""
    stripped = delim.rstrip(" ")
    return stripped, delim[len(stripped):]


def example_from_record(rec: dict, where: str) -> MCExample:
    """Build an MCExample from one reference_qa.jsonl record; `where` is "file:line" for errors."""
    for key in ("id", "task", "prompt", "answer", "text", "choices", "gold"):
        if key not in rec:
            raise ValueError(f"{where}: field {key!r} missing")
    choices, gold = rec["choices"], rec["gold"]
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise ValueError(f"{where}: field 'choices' must be a list of at least two strings")
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise ValueError(f"{where}: field 'gold' must be an index into choices (0..{len(choices) - 1}), got {gold!r}")
    prompt, answer, text = rec["prompt"], rec["answer"], rec["text"]
    if not (text.startswith(prompt) and text.endswith(answer) and len(text) >= len(prompt) + len(answer)):
        raise ValueError(f"{where}: field 'text' is not prompt + delimiter + answer")
    ctx_tail, cont_head = _split_delimiter(text[len(prompt):len(text) - len(answer)])
    task = rec["task"]
    if task in CHOICE_IS_CONTEXT:
        if choices[gold] != prompt:
            raise ValueError(f"{where}: {task}: field 'prompt' must equal choices[gold]")
        requests = tuple((c + ctx_tail, cont_head + answer) for c in choices)
    else:
        if choices[gold] != answer:
            raise ValueError(f"{where}: field 'answer' must equal choices[gold]")
        requests = tuple((prompt + ctx_tail, cont_head + c) for c in choices)
    return MCExample(id=str(rec["id"]), task=task, requests=requests, gold=gold)


def load_mc_examples(path: Optional[str] = None, tasks: Optional[Sequence[str]] = None,
                     limit_per_task: Optional[int] = None) -> List[MCExample]:
    """Multiple-choice examples of a reference_qa.jsonl (default: the packaged one), file order kept.

    `tasks` restricts to those tasks (an unknown or non-multiple-choice task is an error);
    `limit_per_task` keeps the first N of each task.
    """
    path = path or default_reference_path()
    if limit_per_task is not None and limit_per_task < 1:
        raise ValueError(f"limit_per_task must be >= 1, got {limit_per_task}")
    wanted = set(tasks) if tasks else None
    examples: List[MCExample] = []
    per_task: Dict[str, int] = {}
    seen_tasks = set()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: invalid JSON: {e.msg}") from None
            if not isinstance(rec, dict) or "task" not in rec:
                raise ValueError(f"{where}: expected an object with field 'task'")
            seen_tasks.add(rec["task"])
            if rec.get("choices") is None:
                continue  # a generation task (gsm8k, lambada_openai)
            if wanted is not None and rec["task"] not in wanted:
                continue
            if limit_per_task is not None and per_task.get(rec["task"], 0) >= limit_per_task:
                continue
            examples.append(example_from_record(rec, where))
            per_task[rec["task"]] = per_task.get(rec["task"], 0) + 1
    if wanted is not None:
        missing = sorted(wanted - set(per_task))
        if missing:
            mc = sorted(set(per_task) | {t for t in seen_tasks if t in MC_TASKS})
            raise ValueError(f"{path}: no multiple-choice examples for task(s) {missing} "
                             f"(tasks in this file: {sorted(seen_tasks)}; multiple-choice: {mc})")
    if not examples:
        raise ValueError(f"{path}: no multiple-choice examples (records with 'choices')")
    return examples


def _continuation_lengths(scorer, contexts: List[str], continuations: List[str]) -> Tuple[List[int], str]:
    counter = getattr(scorer, "num_tokens", None)
    if counter is not None:
        return [max(1, int(n)) for n in counter(contexts, continuations)], "tokens"
    return [max(1, len(c.encode("utf-8"))) for c in continuations], "bytes"


def evaluate_multiple_choice(scorer, examples: Sequence[MCExample], batch_size: int = 64,
                             progress: bool = True, return_predictions: bool = False) -> dict:
    """Accuracy per task and macro average (over tasks), raw and length-normalised.

    Returns ``{"tasks": {task: {"acc", "acc_norm", "n", "num_choices", "chance"}}, "macro_acc",
    "macro_acc_norm", "num_examples", "length_unit"}`` (+ ``"predictions"`` per example if asked).
    """
    if not examples:
        raise ValueError("evaluate_multiple_choice: no examples")
    contexts = [ctx for ex in examples for ctx, _ in ex.requests]
    continuations = [cont for ex in examples for _, cont in ex.requests]
    scores: List[float] = []
    from synpro_megatron.progress import progress as show_progress

    with show_progress(total=len(contexts), desc="mc eval", unit="choice", disable=not progress) as bar:
        for lo in range(0, len(contexts), batch_size):
            got = list(scorer.loglik(contexts[lo:lo + batch_size], continuations[lo:lo + batch_size]))
            if len(got) != len(contexts[lo:lo + batch_size]):
                raise ValueError(f"scorer.loglik returned {len(got)} scores for {len(contexts[lo:lo + batch_size])} pairs")
            scores.extend(float(s) for s in got)
            bar.update(len(got))
    lengths, unit = _continuation_lengths(scorer, contexts, continuations)

    per_task: "OrderedDict[str, dict]" = OrderedDict()
    predictions = []
    i = 0
    for ex in examples:
        raw = scores[i:i + ex.num_choices]
        norm = [s / n for s, n in zip(raw, lengths[i:i + ex.num_choices])]
        i += ex.num_choices
        if not all(math.isfinite(s) for s in raw):
            raise ValueError(f"{ex.id}: scorer returned a non-finite log-likelihood {raw}")
        pred, pred_norm = _argmax(raw), _argmax(norm)
        t = per_task.setdefault(ex.task, {"correct": 0, "correct_norm": 0, "n": 0, "choices": 0})
        t["correct"] += pred == ex.gold
        t["correct_norm"] += pred_norm == ex.gold
        t["n"] += 1
        t["choices"] += ex.num_choices
        if return_predictions:
            predictions.append({"id": ex.id, "task": ex.task, "gold": ex.gold, "pred": pred, "pred_norm": pred_norm,
                                "loglik": raw})
    tasks = OrderedDict()
    for task, t in per_task.items():
        num_choices = t["choices"] / t["n"]
        tasks[task] = {"acc": t["correct"] / t["n"], "acc_norm": t["correct_norm"] / t["n"], "n": t["n"],
                       "num_choices": num_choices, "chance": 1.0 / num_choices}
    result = {
        "tasks": dict(tasks),
        "macro_acc": sum(t["acc"] for t in tasks.values()) / len(tasks),
        "macro_acc_norm": sum(t["acc_norm"] for t in tasks.values()) / len(tasks),
        "num_examples": len(examples),
        "length_unit": unit,
    }
    if return_predictions:
        result["predictions"] = predictions
    return result


def _argmax(values: Sequence[float]) -> int:
    # ties go to the first choice, deterministically
    return max(range(len(values)), key=lambda k: (values[k], -k))


def format_table(result: dict) -> str:
    """Fixed-width table: task, n, choices, acc, acc_norm, chance; macro average last."""
    rows = [(task, str(t["n"]), f"{t['num_choices']:g}", f"{t['acc']:.4f}", f"{t['acc_norm']:.4f}", f"{t['chance']:.4f}")
            for task, t in result["tasks"].items()]
    rows.append(("macro average", str(result["num_examples"]), "", f"{result['macro_acc']:.4f}",
                 f"{result['macro_acc_norm']:.4f}", ""))
    header = ("task", "n", "choices", "acc", f"acc_norm/{result['length_unit'][:-1]}", "chance")
    widths = [max(len(h), *(len(r[k]) for r in rows)) for k, h in enumerate(header)]

    def line(r):
        return "  ".join(c.ljust(w) if k == 0 else c.rjust(w) for k, (c, w) in enumerate(zip(r, widths)))

    out = [line(header), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows[:-1]] + ["  ".join("-" * w for w in widths), line(rows[-1])]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------- checkpoints
class CheckpointScorer:
    """log p(continuation | context) from a Megatron checkpoint (a checkpoint dir or a run dir).

    Pairs are tokenised separately and concatenated; contexts that do not fit `max_len` (default:
    the model's sequence length) are cut on the left. Batches are formed from pairs of similar
    length, so little compute goes to padding.
    """

    def __init__(self, checkpoint: str, tp: int = 1, pp: int = 1, batch_size: int = 16,
                 max_len: Optional[int] = None):
        from synpro_megatron.pretrain.inference import load_for_inference

        if pp != 1:
            raise ValueError("CheckpointScorer needs pp=1 (scoring runs the whole model in one stage)")
        self.loaded = load_for_inference(checkpoint, tp=tp, pp=pp)
        self.tokenizer = self.loaded.tokenizer
        self.batch_size = batch_size
        self.max_len = max_len or self.loaded.config.model_config().seq_length
        self._cache: Dict[str, List[int]] = {}

    @property
    def checkpoint(self) -> str:
        return self.loaded.checkpoint

    @property
    def step(self) -> int:
        return self.loaded.step

    def _tokens(self, texts: Iterable[str]) -> List[List[int]]:
        texts = list(texts)
        new = sorted({t for t in texts if t not in self._cache})
        if new:  # contexts repeat across the choices of one example: tokenise each once
            for t, ids in zip(new, self.tokenizer.tokenize_batch(new)):
                self._cache[t] = list(ids)
        out = [self._cache[t] for t in texts]
        if len(self._cache) > 20000:
            self._cache.clear()
        return out

    def _pairs(self, contexts: Sequence[str], continuations: Sequence[str]):
        ctx_ids = self._tokens(contexts)
        cont_ids = self._tokens(continuations)
        pairs = []
        for ctx, cont in zip(ctx_ids, cont_ids):
            if not cont:
                raise ValueError("empty continuation: nothing to score")
            cont = cont[:self.max_len]  # keep at least one context position in the window
            pairs.append((ctx or [self.tokenizer.eod], cont))  # an empty context conditions on EOD
        return pairs

    def num_tokens(self, contexts: Sequence[str], continuations: Sequence[str]) -> List[int]:
        return [len(cont) for _, cont in self._pairs(contexts, continuations)]

    def loglik(self, contexts: Sequence[str], continuations: Sequence[str]) -> List[float]:
        from synpro_megatron.pretrain.inference import sequence_logprobs

        pairs = self._pairs(contexts, continuations)
        order = sorted(range(len(pairs)), key=lambda k: len(pairs[k][0]) + len(pairs[k][1]))
        out = [0.0] * len(pairs)
        for lo in range(0, len(order), self.batch_size):
            idx = order[lo:lo + self.batch_size]
            got = sequence_logprobs(self.loaded.model, [pairs[k][0] for k in idx], [pairs[k][1] for k in idx],
                                    pad_id=self.tokenizer.eod, max_len=self.max_len)
            for k, v in zip(idx, got):
                out[k] = v
        return out


# ---------------------------------------------------------------------------------------- runs
def run_dir_of_checkpoint(path: str) -> Optional[str]:
    """The run dir a checkpoint belongs to (given a run dir, checkpoints/ or iter_N), else None."""
    path = os.path.abspath(path)
    for cand in (path, os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
        if os.path.isdir(os.path.join(cand, "checkpoints")) and (
                os.path.exists(os.path.join(cand, "pretrain_config.json"))
                or os.path.exists(os.path.join(cand, "metrics.jsonl"))):
            return cand
    return None


def eval_record(result: dict, step: int, checkpoint: str, tokens: Optional[int] = None) -> dict:
    """One eval_mc.jsonl line: step (+ tokens), macro and per-task accuracies."""
    rec = {"kind": "eval_mc", "step": step, "checkpoint": checkpoint}
    if tokens is not None:
        rec["tokens"] = tokens
    rec.update({k: result[k] for k in ("macro_acc", "macro_acc_norm", "num_examples", "length_unit")})
    rec["tasks"] = result["tasks"]
    return rec


def tokens_at_step(run_dir: str, step: int) -> Optional[int]:
    """Tokens consumed at `step`, from the run's metrics.jsonl (None when not logged)."""
    from synpro_megatron.pretrain.metrics import read_metrics

    tokens = None
    for rec in read_metrics(run_dir):
        if rec.get("step") == step and isinstance(rec.get("tokens"), int):
            tokens = rec["tokens"]
    return tokens


def evaluate_checkpoint(checkpoint: str, tasks: Optional[Sequence[str]] = None,
                        limit_per_task: Optional[int] = None, reference: Optional[str] = None,
                        output: Optional[str] = None, record_in_run: bool = True, batch_size: int = 16,
                        progress: bool = True) -> dict:
    """Score one checkpoint; write `output` (JSON) and, for a checkpoint inside a run dir, append
    a line to RUN_DIR/eval_mc.jsonl. The loop calls this after a pretrain chunk; the CLI too."""
    examples = load_mc_examples(reference, tasks, limit_per_task)
    scorer = CheckpointScorer(checkpoint, batch_size=batch_size)
    # large chunks, so the scorer's length-sorted batches have little padding
    result = evaluate_multiple_choice(scorer, examples, batch_size=512, progress=progress)
    run_dir = run_dir_of_checkpoint(scorer.checkpoint)
    tokens = tokens_at_step(run_dir, scorer.step) if run_dir else None
    # relative to the run dir, so a run dir can move (to or from a cluster) and its log stays valid
    where = os.path.relpath(scorer.checkpoint, run_dir) if run_dir else os.path.abspath(scorer.checkpoint)
    record = eval_record(result, scorer.step, where, tokens)
    if output:
        write_text_atomic(output, json.dumps(record, indent=2, sort_keys=True) + "\n")
    if record_in_run and run_dir:
        append_jsonl_atomic(os.path.join(run_dir, "eval_mc.jsonl"), record)
        record["appended_to"] = os.path.join(run_dir, "eval_mc.jsonl")
    return record
