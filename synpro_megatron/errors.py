"""User-facing errors: one clear line, never a traceback wall, nothing already written lost.

- `UserError`: bad input or a refused action; the CLI prints `synpro CMD: error: MESSAGE` and exits 2.
- `guard_existing_output`: a command about to write into an output that already holds a run
  refuses (saying how to resume or start over), or with `--overwrite` moves the old one aside.
- `run_child` / `error_line`: a child process (torchrun's ranks, a loop stage) whose failure is
  reported as its one error line first, with the full output kept in a file for the details.
- `remove_stale_temp_files`: `*.tmp-PID*` files left by killed runs whose PID is gone.
"""
from __future__ import annotations

import glob
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import IO, Callable, List, Optional, Sequence


class UserError(Exception):
    """An error the user can fix; its message is the whole report (no traceback)."""


# ------------------------------------------------------------------ existing outputs

def move_aside(path: str) -> str:
    """Rename `path` to `path.old-YYYYmmdd-HHMMSS[-N]` (never deletes); returns the new name."""
    target = move_aside_target(path)
    os.rename(path, target)
    return target


def guard_existing_output(path: str, holds_a_run: bool, overwrite: bool, command: str, what: str,
                          resume_hint: Optional[str] = None) -> Optional[str]:
    """Refuse to write over an earlier run at `path` (`what` says what is there), or with
    `overwrite` move it aside first. Returns where the old run went, or None when nothing moved."""
    if not holds_a_run:
        return None
    if not overwrite:
        how = f"{resume_hint}, or " if resume_hint else ""
        raise UserError(f"{path} already holds {what}; {how}pass --overwrite to move it aside and start over "
                        f"(nothing is deleted)")
    moved = move_aside(path)
    print(f"synpro {command}: moved the earlier run {path} to {moved}", file=sys.stderr, flush=True)
    return moved


def move_aside_into(paths: Sequence[str], base: str) -> Optional[str]:
    """Move the existing ones of `paths` into a new folder `base.old-STAMP` (never deletes);
    returns that folder, or None when none of them exists."""
    existing = [p for p in paths if os.path.lexists(p)]
    if not existing:
        return None
    target = move_aside_target(base)
    os.makedirs(target)
    for p in existing:
        os.rename(p, os.path.join(target, os.path.basename(p)))
    return target


def move_aside_target(path: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = f"{path}.old-{stamp}", 1
    while os.path.lexists(target):
        n += 1
        target = f"{path}.old-{stamp}-{n}"
    return target


# ------------------------------------------------------------------ stale temporary files

# what follows the prefix in a temporary name: ".tmp-PID.bin", "_heldout.docids.json.tmp-PID", ...
_TMP_PID = re.compile(r"^(?:_heldout)?(?:\.[A-Za-z]+)*\.tmp-(\d+)")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temp_files(prefix: str) -> List[str]:
    """Remove `PREFIX*.tmp-PID*` files whose writer (PID) is no longer running; returns them."""
    removed = []
    for path in glob.glob(glob.escape(prefix) + "*.tmp-*"):
        m = _TMP_PID.match(path[len(prefix):])
        if m is None or int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))):
            continue
        try:
            os.remove(path)
            removed.append(path)
        except OSError:
            pass
    return removed


# ------------------------------------------------------------------ child processes

_ERROR_LINE = re.compile(r"^(synpro [\w-]+: error: .*|[\w.]*(Error|Exception): .*)$")


def error_line(text: str) -> Optional[str]:
    """The first `synpro CMD: error: ...` line of a child's output, else its last `XError: ...` line."""
    lines = [ln.strip() for ln in text.splitlines()]
    for ln in lines:
        if ln.startswith("synpro ") and ": error: " in ln:
            return ln
    for ln in reversed(lines):
        if _ERROR_LINE.match(ln) and not ln.startswith(("torch.distributed.elastic", "ChildFailedError")):
            return ln
    return None


class StderrTee:
    """Read a child's stderr: copy every line to `log` and, until the first sign of failure (an
    error line or a traceback), to `sink` live. Progress and warnings stay visible; the failure
    noise of launchers (torchrun's ChildFailedError report) goes to the log only."""

    def __init__(self, stream: IO[str], sink: IO[str], log_path: Optional[str] = None,
                 quiet_after_error: bool = True):
        self.log_path = log_path
        self.text: List[str] = []
        self._quiet = False
        self._quiet_after_error = quiet_after_error
        self._thread = threading.Thread(target=self._pump, args=(stream, sink), daemon=True)
        self._thread.start()

    def _pump(self, stream, sink):
        with open(self.log_path or os.devnull, "w", encoding="utf-8") as log:
            for line in stream:
                self.text.append(line)
                if len(self.text) > 2000 and self.log_path is None:
                    del self.text[:1000]
                log.write(line)
                log.flush()
                if self._quiet_after_error and not self._quiet and (": error: " in line or line.startswith("Traceback")
                                        or "ChildFailedError" in line or "ERROR:torch.distributed" in line):
                    self._quiet = True
                if not self._quiet:
                    sink.write(line)
                    sink.flush()

    def join(self) -> str:
        self._thread.join()
        return "".join(self.text)


class _FileTail(StderrTee):
    """StderrTee over a log file the child writes itself: the child never depends on this process
    (a preemption signal to the whole process group may end the launcher first; a child writing
    into a pipe of a dead reader would then fail instead of checkpointing)."""

    def __init__(self, log_path: str, sink: IO[str], finished: Callable[[], bool]):
        self._finished = finished
        self.log_path, self.text, self._quiet = log_path, [], False
        self._thread = threading.Thread(target=self._pump, args=(None, sink), daemon=True)
        self._thread.start()

    def _pump(self, stream, sink):
        partial = ""
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            while True:
                done = self._finished()  # read before the last pass, so nothing written before exit is missed
                chunk = f.readline()
                while chunk:
                    partial += chunk
                    if partial.endswith("\n"):
                        self._line(partial, sink)
                        partial = ""
                    chunk = f.readline()
                if done:
                    break
                time.sleep(0.1)
        if partial:
            self._line(partial, sink)

    def _line(self, line, sink):
        self.text.append(line)
        if not self._quiet and (": error: " in line or line.startswith("Traceback")
                                or "ChildFailedError" in line or "ERROR:torch.distributed" in line):
            self._quiet = True
        if not self._quiet:
            sink.write(line)
            sink.flush()


def run_child(cmd: Sequence[str], command: str, log_path: str, env: Optional[dict] = None) -> int:
    """Run `cmd` (stdout passes through; stderr goes to `log_path` and is shown live until the first
    sign of failure); on failure print ONE line naming the error, then where the full stderr is.
    Returns the child's exit code."""
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(list(cmd), stderr=log, env=env)
    tee = _FileTail(log_path, sys.stderr, lambda: proc.poll() is not None)
    # Preemption (SIGTERM/SIGUSR1) and Ctrl-C reach the whole process group: the child (torchrun)
    # shuts its ranks down after their checkpoint. This process waits for that instead of dying
    # first, so whoever waits on it (srun, a job script) sees the end of the checkpoint.
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda signum, frame: None)
    try:
        rc = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    text = tee.join()
    if rc == 143:  # the trainer's "stopped on SIGTERM/SIGUSR1 after its checkpoint": not an error
        print(f"synpro {command}: stopped by a signal after checkpointing (exit code 143); "
              f"rerun with --resume to continue", file=sys.stderr, flush=True)
    elif rc != 0:
        line = error_line(text) or f"a process exited with code {rc}"
        if not line.startswith(f"synpro {command}: error: "):
            line = f"synpro {command}: error: {line}"
        print(line, file=sys.stderr)
        print(f"  (details: the processes' full output is in {log_path})", file=sys.stderr, flush=True)
    return rc
