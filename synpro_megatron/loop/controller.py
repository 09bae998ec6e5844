"""The SynPro loop controller: a state machine persisted in RUN_DIR/state.json.

    [prepare] -> pretrain (chunks) --plateau--> probe -> train_generator:KIND... -> synthesize:KIND...
        ^                                                                               |
        +------------------------------ extend_blend <----------------------------------+
    ... until the token budget is spent -> done

Write-then-mark: a stage is recorded as finished only after its outputs exist on disk, and the
state file is replaced atomically. A crash anywhere therefore redoes at most the interrupted
stage; pretraining resumes from its newest checkpoint. Decisions (plateau checks with their
numbers, finished stages) go to RUN_DIR/loop_log.jsonl; each record carries an `event` number,
and records from an attempt that crashed before its state write are dropped on the next write,
so the log of a crashed-and-rerun loop equals the log of an uninterrupted one (up to `time`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
from typing import Callable, List, Optional

from synpro_megatron.fsutil import append_jsonl, atomic_write_jsonl, dir_has_files, read_json, read_jsonl
from synpro_megatron.rundir import RunDir

from .blend import extend_blend
from .config import ConfigError, LoopConfig
from .plateau import detect_plateau, read_metrics
from .runner import CliRunner, Interrupted, StageFailed, StageRunner
from .state import DONE, LoopState, round_stages

# changing these mid-run would make the recorded state and checkpoints meaningless
IMMUTABLE = ("model", "data", "input", "held_out", "train.global_batch", "train.seq_length", "generators.kinds")


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


class Controller:
    def __init__(self, cfg: LoopConfig, run_dir: str, runner: Optional[StageRunner] = None,
                 echo: Callable[[str], None] = print):
        self.cfg = cfg
        self.layout = RunDir(run_dir)
        self.runner = runner if runner is not None else CliRunner(echo=echo, parallel=cfg.parallel)
        self.echo = echo
        self._stop_signal: Optional[int] = None
        self.state = self._load_or_init()

    # ------------------------------------------------------------------ state & log
    def _load_or_init(self) -> LoopState:
        os.makedirs(self.layout.root, exist_ok=True)
        snap = self.layout.config_snapshot
        new = self.cfg.to_dict()
        if os.path.exists(snap):
            old = read_json(snap)
            try:  # a snapshot from an older version lacks newer fields: read it with their defaults
                old = LoopConfig.from_dict(old).to_dict()
            except ConfigError:
                pass
            changed = [k for k in IMMUTABLE if _get(old, k) != _get(new, k)]
            if changed:
                raise ValueError(f"{snap}: the run was started with a different {', '.join(changed)}; "
                                 f"use a new run dir (or restore those fields)")
        self.cfg.save(snap)
        state = LoopState.load(self.layout.state)
        if state is None:
            data = os.path.abspath(self.cfg.data) if self.cfg.data else None
            state = LoopState(stage="prepare" if data is None else "pretrain", data=data)
            state.save(self.layout.state)
        return state

    def _rel(self, path: str) -> str:
        return os.path.relpath(path, self.layout.root)

    def _abs(self, path: Optional[str]) -> Optional[str]:
        return None if path is None else os.path.join(self.layout.root, path)

    def _commit(self, state: LoopState, records: List[dict]) -> None:
        """Append `records` to the loop log, then write `state` (the commit point)."""
        log = read_jsonl(self.layout.loop_log)
        new = []
        for rec in records:
            new.append(dict(rec, event=state.events, time=time.strftime("%Y-%m-%dT%H:%M:%S")))
            state.events += 1
        first = new[0]["event"] if new else state.events
        if len(log) == first and all(r.get("event") == i for i, r in enumerate(log)):
            append_jsonl(self.layout.loop_log, new)  # the usual case: the log is exactly what state.json says
        else:  # leftovers of an attempt that died before its state write: drop them
            atomic_write_jsonl(self.layout.loop_log, [r for r in log if r.get("event", -1) < first] + new)
        state.save(self.layout.state)
        self.state = state

    def _finish(self, state: LoopState, stage: str, next_stage: str, outputs: List[str], extra: Optional[dict] = None,
                records: Optional[List[dict]] = None) -> None:
        entry = {"stage": stage, "round": state.round, "outputs": [self._rel(p) for p in outputs]}
        entry.update(extra or {})
        state.history.append(entry)
        state.stage = next_stage
        self._commit(state, (records or []) + [dict(entry, kind="stage", next=next_stage)])
        self.echo(f"[synpro loop] {stage} done -> {next_stage}")

    def _copy(self) -> LoopState:
        return LoopState.from_dict(dataclasses.asdict(self.state))

    # ------------------------------------------------------------------ driving
    def run(self, max_stages: Optional[int] = None) -> LoopState:
        """Run stages until done (or `max_stages` stage executions). SIGTERM/SIGUSR1 stop the
        running stage (which checkpoints) and raise `Interrupted`."""
        with self._exclusive(), self._signals():
            n = 0
            while not self.state.done and (max_stages is None or n < max_stages):
                if self._stop_signal is not None:
                    raise Interrupted(f"stopped on signal {self._stop_signal} before stage {self.state.stage}")
                self.step()
                n += 1
        return self.state

    def step(self) -> None:
        stage = self.state.stage
        name, _, kind = stage.partition(":")
        handler = {"prepare": self._prepare, "pretrain": self._pretrain, "probe": self._probe,
                   "train_generator": self._train_generator, "synthesize": self._synthesize,
                   "extend_blend": self._extend_blend}.get(name)
        if handler is None:
            raise ValueError(f"{self.layout.state}: field 'stage' has unknown value {stage!r}")
        self.echo(f"[synpro loop] stage {stage} (round {self.state.round}, step {self.state.step})")
        handler(kind) if kind else handler()

    def request_stop(self, signum: int) -> None:
        self._stop_signal = signum
        self.runner.interrupt(signum)

    @contextlib.contextmanager
    def _exclusive(self):
        """One controller per run dir: two would race on state.json and the checkpoints."""
        import fcntl

        path = self.layout.loop_lock
        with open(path, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ValueError(f"{path}: another `synpro run` is driving {self.layout.root}") from None
            except OSError as e:  # a filesystem without locks: carry on, as before locks existed
                self.echo(f"[synpro loop] warning: cannot lock {path} ({e}); make sure only one controller runs")
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        sigs = (signal.SIGTERM, signal.SIGUSR1)
        old = {s: signal.getsignal(s) for s in sigs}
        for s in sigs:
            signal.signal(s, lambda signum, frame: self.request_stop(signum))
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    # ------------------------------------------------------------------ stages
    def _next_after(self, stage: str) -> str:
        order = round_stages(self.cfg.generators.kinds)
        return order[order.index(stage) + 1]

    def _prepare(self) -> None:
        out = self.layout.organic_prefix
        os.makedirs(os.path.dirname(out), exist_ok=True)
        self.runner.prepare(self.cfg.input, out, self.cfg.train.tokenizer, self.cfg.held_out)
        outputs = [out + ".bin", out + ".idx"]
        _require_files("prepare", outputs)
        st = self._copy()
        st.data = self._rel(out)
        self._finish(st, "prepare", "pretrain", outputs)

    def _pretrain_config(self, stop_at_sample: int, resume: bool):
        from synpro_megatron.pretrain.config import PretrainConfig

        c, t, p = self.cfg, self.cfg.train, self.cfg.parallel
        data = self._organic()
        return PretrainConfig(
            run_dir=self.layout.root, data=data, model=c.model, seq_length=t.seq_length, tokenizer=t.tokenizer,
            tp=p.tp, pp=p.pp, micro_batch=t.micro_batch, global_batch=t.global_batch, max_steps=c.total_steps(),
            lr=t.lr, seed=c.seed, eval_interval=t.eval_interval, save_interval=t.save_interval, resume=resume,
            blend_schedule=self._abs(self.state.blend_schedule),
            synthetic={k: self._abs(v) for k, v in self.state.synthetic.items()}, stop_at_sample=stop_at_sample,
            value_documents=t.value_documents)

    def _pretrain(self) -> None:
        c, st = self.cfg, self._copy()
        gb = c.train.global_batch
        total = c.total_steps()
        chunk = c.train.eval_interval * c.train.chunk_evals
        # the chunk target comes from the recorded state, not the newest checkpoint, so a rerun
        # after a crash makes the same decisions at the same steps as an uninterrupted run
        target = min(total, (st.step // chunk + 1) * chunk)
        latest = self.layout.latest_step()
        if latest is not None and latest < st.step:
            raise StageFailed("pretrain", f"{self.layout.checkpoints}/latest is step {latest}, but the loop "
                                          f"already reached step {st.step}: checkpoints were removed?")
        if latest is None or latest < target:
            self.runner.pretrain(self._pretrain_config(target * gb, resume=True), c.parallel,
                                 c.preempt_grace_s)
        end = self.layout.latest_step()
        if end is None or end < target:
            raise StageFailed("pretrain", f"finished without a checkpoint at step {target} "
                                          f"(latest: {end}); see the trainer's output above")
        if not os.path.isdir(self.layout.checkpoint(end)):
            raise StageFailed("pretrain", f"{self.layout.checkpoint(end)} is missing")
        st.step, st.consumed_samples = end, end * gb
        st.tokens = st.consumed_samples * c.seq_length()
        decision = detect_plateau(read_metrics(self.layout.metrics), c.plateau, st.refresh_step, end)
        record = dict(decision.to_dict(), kind="plateau", round=st.rounds_done)
        if end >= total:
            nxt = DONE
            record["action"] = "budget spent"
        elif not decision.plateau:
            nxt = "pretrain"
            record["action"] = "continue"
        elif st.rounds_done >= c.max_rounds:
            nxt = "pretrain"
            record["action"] = f"continue: max_rounds={c.max_rounds} reached"
        elif total - end < chunk:
            nxt = "pretrain"
            record["action"] = "continue: less than one chunk of budget left, a new round would not be used"
        else:
            nxt = "probe"
            record["action"] = f"refresh: build round {st.rounds_done + 1}"
            st.round = st.rounds_done + 1
            st.plateau_step = end
            st.plateau_checkpoint = self._rel(self.layout.checkpoint(end))
        self.echo(f"[synpro loop] plateau check at step {end}: {decision.reason} -> {record['action']}")
        self._finish(st, "pretrain", nxt, [self.layout.checkpoint(end), self.layout.metrics],
                     {"round": st.rounds_done, "step": end, "tokens": st.tokens}, records=[record])

    def _args(self, args: List[str]) -> List[str]:
        """Extra stage arguments with {run_dir}, {round_dir}, {round}, {checkpoint} filled in
        (e.g. synth_args: [--select, "top-loss:0.5", --doc-losses, "{round_dir}/probe/doc_losses.jsonl"])."""
        k = self.state.round
        values = {"run_dir": self.layout.root, "round_dir": self.layout.round_dir(k), "round": k,
                  "checkpoint": self._abs(self.state.plateau_checkpoint) or ""}
        try:
            return [a.format(**values) for a in args]
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"generators.*_args: cannot fill in {args}: {e!r} "
                             f"(placeholders: {', '.join('{' + v + '}' for v in values)})") from None

    def _organic(self) -> str:
        return self.state.data if os.path.isabs(self.state.data) else self._abs(self.state.data)

    def _probe(self) -> None:
        k = self.state.round
        self.runner.probe(self.layout.root, k, self._abs(self.state.plateau_checkpoint),
                          self._args(self.cfg.generators.probe_args))
        out = self.layout.probe_dir(k)
        if not dir_has_files(out):
            raise StageFailed("probe", f"finished but wrote nothing under {out}")
        self._finish(self._copy(), "probe", self._next_after("probe"), [out])

    def _train_generator(self, kind: str) -> None:
        k, stage = self.state.round, f"train_generator:{kind}"
        self.runner.train_generator(kind, self.layout.root, k, self._abs(self.state.plateau_checkpoint),
                                    self._args(self.cfg.generators.train_args + self.cfg.generators.reward_model_args("train")), organic=self._organic())
        out = self.layout.generator_dir(k, kind)
        if not dir_has_files(out):
            raise StageFailed(stage, f"finished but wrote no generator under {out}")
        self._finish(self._copy(), stage, self._next_after(stage), [out])

    def _synthesize(self, kind: str) -> None:
        k, stage = self.state.round, f"synthesize:{kind}"
        self.runner.synthesize(kind, self.layout.root, k, self.layout.generator_dir(k, kind),
                               self._args(self.cfg.generators.synth_args + self.cfg.generators.reward_model_args("synth")), organic=self._organic())
        prefix = self.layout.synthetic_prefix(k, kind)
        outputs = [prefix + ".bin", prefix + ".idx"]
        _require_files(stage, outputs)
        self._finish(self._copy(), stage, self._next_after(stage), outputs)

    def _extend_blend(self) -> None:
        st, c = self._copy(), self.cfg
        k, start = st.round, st.plateau_step * c.train.global_batch
        ext = extend_blend(self.layout.root, k, c.generators.kinds, start, c.blend, c.seq_length(),
                           c.total_steps() * c.train.global_batch, warn=self.echo)
        st.rounds_done = k
        st.refresh_step, st.refresh_sample = st.plateau_step, start
        st.synthetic = {name: self._rel(prefix) for name, prefix in ext.synthetic.items()}
        st.blend_schedule = self._rel(ext.path)
        self._finish(st, "extend_blend", "pretrain", [ext.path],
                     {"start_sample": start, "empty": ext.empty, "weights": ext.weights,
                      "epoch_caps": {name: round(cap, 6) for name, cap in ext.caps.items()}})


def _require_files(stage: str, paths: List[str]) -> None:
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise StageFailed(stage, f"finished but these outputs are missing: {', '.join(missing)}")
