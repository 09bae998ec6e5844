"""Stage runners: how the controller executes one stage.

`StageRunner` is the interface; the controller only calls these methods and then checks that
the stage's outputs exist (see `Controller`). `CliRunner`, the default, runs the real `synpro`
commands as subprocesses; `synpro_megatron.loop.smoke.SmokeRunner` writes stand-in outputs for
smoke runs of the plumbing. Every stage gets the run root and its round (synpro_megatron.rundir
says where its outputs go). A runner must be safe to call again for a stage that was interrupted: outputs are
overwritten, pretraining resumes from its checkpoint.

Preemption: `interrupt()` (called from the controller's SIGTERM/SIGUSR1 handler) forwards
SIGTERM to the running stage. SIGTERM, not SIGUSR1, because torchrun and srun both forward
SIGTERM to the training ranks by default, and the trainer answers either one by finishing its
step, saving a checkpoint and exiting. The stage then ends with `Interrupted`.

For a local torchrun launch the signal goes to the ranks themselves, not to torchrun: torchrun
forwards it with killpg to each rank's whole process group, which also kills the helper
processes Megatron's checkpoint writer needs (measured: the save on SIGTERM then fails with
ConnectionRefusedError), while a signal to the rank alone lets it checkpoint.
"""
from __future__ import annotations

import abc
import os
import shlex
import signal
import subprocess
import sys
import threading
from typing import List, Optional, Sequence

from synpro_megatron.errors import StderrTee, error_line
from synpro_megatron.fsutil import atomic_write_text

from .config import ParallelConfig


class StageFailed(RuntimeError):
    def __init__(self, stage: str, message: str):
        super().__init__(f"stage {stage}: {message}")
        self.stage = stage


class Interrupted(RuntimeError):
    """The stage (or the loop) stopped on SIGTERM/SIGUSR1; rerunning continues from state.json."""


class StageRunner(abc.ABC):
    """One method per stage. Arguments are plain paths/values; nothing is returned: the
    controller checks the outputs on disk (write-then-mark)."""

    @abc.abstractmethod
    def prepare(self, input: str, output: str, tokenizer: Optional[str] = None, held_out: float = 0.02) -> None:
        """Write the organic dataset `output`.{bin,idx} (and the `held_out` fraction as
        `output`_heldout) from the JSONL `input`."""

    @abc.abstractmethod
    def pretrain(self, cfg, parallel: ParallelConfig, grace_s: int = 240) -> None:
        """Run `synpro_megatron.pretrain.config.PretrainConfig` cfg until cfg.stop_at_sample."""

    @abc.abstractmethod
    def probe(self, run_dir: str, round_k: int, checkpoint: str, args: Sequence[str] = ()) -> None:
        """Reference-set projected gradients at `checkpoint`, into RunDir(run_dir).probe_dir(round_k)."""

    @abc.abstractmethod
    def train_generator(self, kind: str, run_dir: str, round_k: int, checkpoint: str, args: Sequence[str] = (),
                        organic: Optional[str] = None) -> None:
        """GRPO-train the `kind` generator against `checkpoint` on the organic pool at `organic`
        (default: the run's), into RunDir(run_dir).generator_dir(round_k, kind)."""

    @abc.abstractmethod
    def synthesize(self, kind: str, run_dir: str, round_k: int, generator: Optional[str] = None,
                   args: Sequence[str] = (), organic: Optional[str] = None) -> None:
        """Write RunDir(run_dir).synthetic_prefix(round_k, kind).{bin,idx} with `generator`
        (default: the round's trained one) from the organic pool at `organic` (default: the run's)."""

    def interrupt(self, signum: int) -> None:
        """Ask the running stage to stop (checkpointing if it can). Default: nothing runs."""


def launch_prefix(parallel: ParallelConfig, python: str = sys.executable, env=None) -> List[str]:
    """Command prefix that starts `-m MODULE` on every training rank.

    local, 1 process: plain python. local, N processes: torchrun --standalone (we start torchrun
    ourselves rather than letting `synpro pretrain` re-exec, so the runner knows its ranks and
    can signal them directly).
    srun: one torchrun agent per node via srun, c10d rendezvous at MASTER_ADDR (the Slurm script
    sets it from the first node of the allocation).
    """
    env = os.environ if env is None else env
    launcher = parallel.launcher
    if launcher == "auto":
        launcher = "srun" if parallel.nnodes > 1 else "local"
    if launcher == "local":
        if parallel.nnodes > 1:
            raise ValueError("parallel.launcher 'local' cannot start more than one node; use 'srun'")
        if parallel.nproc_per_node == 1:
            return [python]
        return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={parallel.nproc_per_node}"]
    master = env.get("MASTER_ADDR")
    if not master:
        raise ValueError("parallel.launcher 'srun' needs MASTER_ADDR (the first node's address) in the environment")
    port = env.get("MASTER_PORT", str(parallel.master_port))
    run_id = env.get("SLURM_JOB_ID", "synpro")
    # SYNPRO_SRUN_ARGS: extra srun flags, e.g. pyxis' --container-image=... --container-mounts=...
    extra = shlex.split(env.get("SYNPRO_SRUN_ARGS", ""))
    return ["srun", f"--nodes={parallel.nnodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1", *extra,
            python, "-m", "torch.distributed.run", f"--nnodes={parallel.nnodes}",
            f"--nproc-per-node={parallel.nproc_per_node}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={master}:{port}", f"--rdzv-id={run_id}"]


def synthesis_world(parallel: Optional[ParallelConfig]) -> tuple[int, int]:
    """(nodes, tasks per node) of the synthesis stage: one engine per GPU, or per vllm_tp GPUs."""
    if parallel is None:
        return 1, 1
    nodes = parallel.synthesis_nodes or parallel.nnodes
    per_node = parallel.synthesis_tasks_per_node or max(1, parallel.nproc_per_node // max(1, parallel.vllm_tp))
    if nodes < 1 or per_node < 1:
        raise ValueError(f"synthesis needs >= 1 node and task per node, got {nodes} x {per_node}")
    return nodes, per_node


def synthesis_launch(parallel: Optional[ParallelConfig], synth_cmd: List[str], launch_dir: str,
                     env=None) -> List[str]:
    """The command that runs `synth_cmd` (a `synpro synthesize` command line without rank flags)
    on every synthesis rank, each told its rank and the world on its own command line.

    One rank: the command with --rank 0 --world-size 1. Inside a Slurm allocation: one srun step
    with a --multi-prog file whose line gives task %t `--rank %t --world-size W` (never
    SLURM_PROCID/SLURM_NTASKS, which describe the surrounding job). Outside Slurm (one node):
    torchrun --standalone starts the ranks, and the CLI reads the RANK/WORLD_SIZE it sets."""
    env = os.environ if env is None else env
    nodes, per_node = synthesis_world(parallel)
    world = nodes * per_node
    if world == 1:
        return synth_cmd + ["--rank", "0", "--world-size", "1"]
    tp = max(1, parallel.vllm_tp)
    tp_flags = ["--vllm-tp", str(tp)] if tp > 1 else []
    if not env.get("SLURM_JOB_ID"):
        if nodes > 1:
            raise ValueError(f"synthesis over {nodes} nodes needs a Slurm allocation (srun); outside one, "
                             "set parallel.synthesis_nodes: 1 or launch `synpro synthesize --shard R/N` yourself")
        python, rest = synth_cmd[0], synth_cmd[1:]
        if rest[:2] != ["-m", "synpro_megatron.cli"]:
            raise ValueError(f"not a synpro command line: {shlex.join(synth_cmd)}")
        return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={per_node}",
                *rest, *tp_flags]
    os.makedirs(launch_dir, exist_ok=True)
    conf = os.path.join(launch_dir, "synthesis.multi-prog.conf")
    line = shlex.join(synth_cmd + tp_flags + ["--world-size", str(world), "--rank"]) + " %t"
    atomic_write_text(conf, f"# written by synpro run: {world} synthesis ranks, task %t gets --rank %t\n"
                            f"0-{world - 1} {line}\n")
    gpus = ["--gpus-per-task", str(tp)] if (env.get("SLURM_GPUS_ON_NODE") or env.get("SLURM_JOB_GPUS")) else []
    extra = shlex.split(env.get("SYNPRO_SRUN_ARGS", ""))
    return ["srun", f"--nodes={nodes}", f"--ntasks={world}", f"--ntasks-per-node={per_node}",
            "--kill-on-bad-exit=1", *gpus, *extra, "--multi-prog", conf]


class SubprocessRunner(StageRunner, abc.ABC):
    """Runs each stage as a child process and forwards SIGTERM to it on interrupt."""

    def __init__(self, python: str = sys.executable, env: Optional[dict] = None, echo=print):
        self.python = python
        self.env = dict(os.environ if env is None else env)
        self.echo = echo
        self._proc: Optional[subprocess.Popen] = None
        # reentrant: interrupt() runs in a signal handler, possibly while run_command holds it
        self._lock = threading.RLock()
        self._interrupted = False
        self._signal_children = False

    def run_command(self, stage: str, cmd: List[str], extra_env: Optional[dict] = None,
                    signal_children: bool = False) -> None:
        """Run `cmd`; `signal_children`: on interrupt, signal its child processes (torchrun's
        ranks) rather than the process itself."""
        env = dict(self.env, **(extra_env or {}))
        self.echo(f"[synpro loop] {stage}: {shlex.join(cmd)}")
        with self._lock:
            if self._interrupted:
                raise Interrupted(f"stage {stage} not started: interrupted")
            # stderr through a tee: shown live, and its error line becomes the stage's one-line error
            self._proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, errors="replace")
            tee = StderrTee(self._proc.stderr, sys.stderr, quiet_after_error=False)
            self._signal_children = signal_children
        try:
            rc = self._proc.wait()
        finally:
            with self._lock:
                self._proc = None
        reason = error_line(tee.join())
        if self._interrupted:
            raise Interrupted(f"stage {stage} stopped on a signal (exit code {rc}); rerun to continue")
        if rc != 0:
            raise StageFailed(stage, f"{reason + ' ' if reason else ''}(exit code {rc}; command: {shlex.join(cmd)})")

    def interrupt(self, signum: int) -> None:
        with self._lock:
            self._interrupted = True
            if self._proc is None or self._proc.poll() is not None:
                return
            ranks = _children(self._proc.pid) if self._signal_children else []
            for pid in ranks:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            if not ranks:  # not a launcher, or its ranks are not up yet
                self._proc.send_signal(signal.SIGTERM)


def _children(pid: int) -> List[int]:
    try:
        import psutil

        return [c.pid for c in psutil.Process(pid).children(recursive=False)]
    except Exception:  # noqa: BLE001 - no psutil, or the process just exited: signal the launcher instead
        return []


class CliRunner(SubprocessRunner):
    """The real stages: `python -m synpro_megatron.cli COMMAND ...` (pretrain via its module form).
    `parallel`: the run's resources; synthesis runs over all of them (synthesis_launch)."""

    def __init__(self, python: str = sys.executable, env: Optional[dict] = None, echo=print,
                 parallel: Optional[ParallelConfig] = None):
        super().__init__(python, env, echo)
        self.parallel = parallel

    def _cli(self, *args: str) -> List[str]:
        return [self.python, "-m", "synpro_megatron.cli", *args]

    def prepare(self, input, output, tokenizer=None, held_out=0.02):
        cmd = self._cli("prepare", "--input", input, "--output", output, "--held-out", str(held_out))
        if tokenizer:
            cmd += ["--tokenizer", tokenizer]
        self.run_command("prepare", cmd)

    def pretrain(self, cfg, parallel, grace_s=240):
        from synpro_megatron.pretrain.launch import config_to_args

        prefix = launch_prefix(parallel, self.python, self.env)
        cmd = prefix + ["-m", "synpro_megatron.pretrain"] + config_to_args(cfg)
        local_torchrun = "torch.distributed.run" in prefix and prefix[0] != "srun"
        # torchrun waits this long for the ranks to checkpoint after a signal (default 30 s)
        self.run_command("pretrain", cmd, {"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(grace_s)},
                         signal_children=local_torchrun)

    def probe(self, run_dir, round_k, checkpoint, args=()):
        self.run_command("probe", self._cli("probe", "--run-dir", run_dir, "--round", str(round_k),
                                            "--checkpoint", checkpoint, *args))

    def train_generator(self, kind, run_dir, round_k, checkpoint, args=(), organic=None):
        # GRPO on this node's GPUs (the batch step runs on the allocation's first node); --resume
        # continues a run a preemption interrupted (a fresh one starts at step 0 either way)
        gpus = ["--gpus", "all"] if self.parallel is not None and self.parallel.nproc_per_node > 1 else []
        self.run_command(f"train_generator:{kind}", self._cli(
            "train-generator", "--kind", kind, "--run-dir", run_dir, "--round", str(round_k),
            "--checkpoint", checkpoint, "--resume", *gpus, *_organic(organic), *args))

    def synthesize(self, kind, run_dir, round_k, generator=None, args=(), organic=None):
        # rank and world are given, never inherited: inside a Slurm job or under torchrun the
        # environment's SLURM_PROCID/RANK describe the surrounding job, not this synthesis
        cmd = self._cli("synthesize", "--kind", kind, "--run-dir", run_dir, "--round", str(round_k),
                        *_organic(organic), *args)
        if generator:
            cmd += ["--generator", generator]
        from synpro_megatron.rundir import RunDir

        launch_dir = os.path.join(RunDir(run_dir).round_dir(round_k), f".launch-synthesize-{kind}")
        self.run_command(f"synthesize:{kind}", synthesis_launch(self.parallel, cmd, launch_dir, self.env))


def _organic(prefix: Optional[str]) -> List[str]:
    return ["--organic", prefix] if prefix else []
