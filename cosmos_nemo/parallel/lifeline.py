"""Stopping a run stops all of it: the launcher's side and the workers' side.

torchrun and its workers each start in a new process session (nemo-run's local scheduler starts torchrun
with `start_new_session=True`, and torchrun does the same for every worker), so neither a Ctrl-C at the
terminal nor a kill of the launcher's process group reaches them. Two halves close that gap:

- The launcher (`cosmos-nemo train`, local executor) runs its launch inside `stopping_children()`:
  SIGINT or SIGTERM sends SIGTERM to every descendant (torchrun and its workers), waits up to `grace`
  seconds, SIGKILLs what is left, and raises `StopRequested` for the launcher to report. A second
  signal while stopping SIGKILLs at once. `launcher_env()` is what the workers need to watch it.
- Every launched worker calls `watch()` (from `parallel.setup()` when torchrun's WORLD_SIZE is set):
  - on Linux, prctl(PR_SET_PDEATHSIG, SIGTERM): the kernel signals the worker when its parent (torchrun)
    dies, even by SIGKILL;
  - a daemon thread polls every `POLL_S` seconds: the parent changed (reparented: the parent died), or
    the launcher named by `$COSMOS_NEMO_LAUNCHER` (pid and start time, so a reused pid is not mistaken
    for it) is gone. A gone launcher means torchrun is an orphan too: the worker sends it SIGTERM (it
    then stops every worker) and stops itself;
  - SIGTERM / SIGINT / SIGHUP stop the worker at once: the callbacks given to `on_stop` run (rank 0
    says where the last complete checkpoint is), its own child processes get SIGTERM, then
    `os._exit(128 + signal)`. Should the main thread
    be stuck in native code (a collective, a kernel: code that releases the GIL) and not run the handler,
    the thread (woken through `signal.set_wakeup_fd`) does the same after `SIGNAL_GRACE_S` seconds.
  Checkpoints are written to a temporary folder and renamed (checkpoint/run.py), so stopping at any
  moment leaves the last complete checkpoint intact.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
import time
from typing import Callable, Iterator, Optional

import psutil

LAUNCHER_ENV = "COSMOS_NEMO_LAUNCHER"  # "<pid>:<start time>" of the launching `cosmos-nemo train`
POLL_S = 0.5
SIGNAL_GRACE_S = 3.0
_PR_SET_PDEATHSIG = 1
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


# --------------------------------------------------------------------------------------------------
# processes


def start_time(pid: int) -> Optional[float]:
    """When process `pid` started (seconds since the epoch), None if there is no such process."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def is_alive(pid: int, started: Optional[float] = None) -> bool:
    """Whether `pid` runs (a zombie does not) and, given `started`, is the process that started then."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(proc.create_time() - started) < 0.5
    except psutil.Error:
        return False


def launcher_env() -> dict[str, str]:
    """The environment by which the workers recognise this process as their launcher."""
    return {LAUNCHER_ENV: f"{os.getpid()}:{start_time(os.getpid())!r}"}


def _parse_launcher(value: Optional[str]) -> Optional[tuple[int, Optional[float]]]:
    if not value:
        return None
    pid, _, started = value.partition(":")
    try:
        return int(pid), (float(started) if started not in ("", "None") else None)
    except ValueError:
        return None


def _is_torchrun(pid: int) -> bool:
    try:
        cmdline = psutil.Process(pid).cmdline()
    except psutil.Error:
        return False
    return any(os.path.basename(part) == "torchrun" or part == "torch.distributed.run" for part in cmdline[:4])


# --------------------------------------------------------------------------------------------------
# the launcher's side


class StopRequested(BaseException):
    """SIGINT or SIGTERM reached the launcher; its child processes have been stopped.

    A BaseException, like KeyboardInterrupt, so no `except Exception` on the way up swallows it."""

    def __init__(self, signum: int, stopped: int):
        self.signum = signum
        self.stopped = stopped  # how many child processes were running
        super().__init__(f"stopped by {signal.Signals(signum).name}")

    @property
    def signame(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _descendants() -> list[psutil.Process]:
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def _running(procs: list[psutil.Process]) -> list[psutil.Process]:
    # polled rather than waited for: waiting would reap our own child (torchrun) behind its Popen's back
    return [p for p in procs if is_alive(p.pid)]


def stop_descendants(grace: float = 10.0, sig: int = signal.SIGTERM) -> int:
    """Send `sig` to every descendant of this process, SIGKILL those still running after `grace` seconds
    (and any started meanwhile); returns how many there were."""
    procs = _descendants()
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)
    deadline = time.monotonic() + grace
    while _running(procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    known = {p.pid for p in procs}
    late = [p for p in _descendants() if p.pid not in known]
    for proc in _running(procs) + late:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    deadline = time.monotonic() + 5.0
    while _running(procs + late) and time.monotonic() < deadline:
        time.sleep(0.1)
    return len(procs)


@contextlib.contextmanager
def stopping_children(grace: float = 10.0) -> Iterator[None]:
    """While inside, SIGINT/SIGTERM stop every child process (see `stop_descendants`) and raise
    `StopRequested`. A SIGINT that the shell set to be ignored (a background job) is handled too: a
    deliberate Ctrl-C or `kill -INT` must stop training. Only in the main thread; elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping = []

    def handler(signum, frame):
        if stopping:  # a second signal while stopping: no more waiting
            stop_descendants(grace=0.0, sig=signal.SIGKILL)
            return
        stopping.append(signum)
        with contextlib.suppress(RuntimeError):  # a print interrupted by the signal cannot be re-entered
            print(f"\n{signal.Signals(signum).name}: stopping torchrun and its workers ...", file=sys.stderr, flush=True)
        raise StopRequested(signum, stop_descendants(grace))

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# --------------------------------------------------------------------------------------------------
# the workers' side


class _Watch:
    def __init__(self):
        self.pid = os.getpid()
        self.parent = os.getppid()
        self.launcher = _parse_launcher(os.environ.get(LAUNCHER_ENV))
        self.callbacks: list[Callable[[str], None]] = []
        self.lock = threading.RLock()  # a signal handler may interrupt its holder in the main thread
        self.stopping = False
        self.signalled: Optional[tuple[int, float]] = None
        self.wakeup: Optional[int] = None


_watch: Optional[_Watch] = None


def on_stop(callback: Callable[[str], None]) -> None:
    """Call `callback(reason)` when this worker is stopped by a signal or by its launcher's death (before
    it exits). No effect in a process that `watch()` does not guard."""
    if _watch is not None and _watch.pid == os.getpid():
        _watch.callbacks.append(callback)


def stop(reason: str, code: int) -> None:
    """Run the `on_stop` callbacks once, say why, and end this process with `code`."""
    w = _watch
    if w is not None:
        with w.lock:
            first, w.stopping = not w.stopping, True
        if first:
            for callback in w.callbacks:
                with contextlib.suppress(BaseException):
                    callback(reason)
    with contextlib.suppress(BaseException):
        sys.stderr.write(f"cosmos-nemo: {reason}: stopping (pid {os.getpid()})\n")
        sys.stderr.flush()
        sys.stdout.flush()
    # os._exit skips multiprocessing's clean-up: end this process's own children (an asynchronous checkpoint
    # writer, data loader workers) here, or they would outlive it
    for child in _descendants():
        with contextlib.suppress(psutil.Error):
            child.send_signal(signal.SIGTERM)
    os._exit(code)


def _on_signal(signum, frame) -> None:
    if _watch is None or _watch.pid != os.getpid():  # a forked child (a data loader worker): the default
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    stop(f"received {signal.Signals(signum).name}", 128 + signum)


def _set_parent_death_signal() -> None:
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def _server_dies_with_parent() -> None:
    """Initializer of a multiprocessing Manager's server: stop when the process that started it dies (even by
    SIGKILL), and at once if that already happened."""
    parent = os.getppid()
    _set_parent_death_signal()
    if parent == 1:
        os._exit(0)


_checkpoint_queue_manager = None


def checkpoint_writers_die_with_us() -> None:
    """Give megatron's dist-ckpt results queue a server process that stops when this process dies.

    megatron's filesystem writer (`dist_checkpointing.save`) collects its write results through one queue per
    process, served by a multiprocessing Manager it starts (spawn) at the first save and keeps. Nothing ends
    that server when the trainer is SIGKILLed, so every killed run left one orphan (parent pid 1) behind. This
    makes the queue first, from a Manager whose server has a parent-death signal. Idempotent; a no-op where
    megatron has no such queue (another release) or it already exists."""
    global _checkpoint_queue_manager
    try:
        from megatron.core.dist_checkpointing.strategies import filesystem_async as fa
    except ImportError:
        return
    if getattr(fa, "_results_queue", "absent") is not None:
        return
    import multiprocessing
    from multiprocessing.managers import SyncManager

    manager = SyncManager(ctx=multiprocessing.get_context("spawn"))
    manager.start(initializer=_server_dies_with_parent)
    fa._results_queue = manager.Queue()
    _checkpoint_queue_manager = manager


def _poll(w: _Watch) -> None:
    while True:
        if w.wakeup is not None:
            readable, _, _ = select.select([w.wakeup], [], [], POLL_S)
            if readable:
                with contextlib.suppress(OSError):
                    for signum in os.read(w.wakeup, 64):
                        if signum in _STOP_SIGNALS and w.signalled is None:
                            w.signalled = (signum, time.monotonic())
        else:
            time.sleep(POLL_S)
        if w.signalled is not None and time.monotonic() - w.signalled[1] > SIGNAL_GRACE_S:
            # the handler should have run by now: the main thread is stuck in native code
            stop(f"received {signal.Signals(w.signalled[0]).name}", 128 + w.signalled[0])
        if os.getppid() != w.parent:
            stop(f"its parent process (pid {w.parent}) has exited", 128 + signal.SIGTERM)
        if w.launcher is not None and not is_alive(*w.launcher):
            if w.parent != w.launcher[0] and _is_torchrun(w.parent):
                with contextlib.suppress(OSError):
                    os.kill(w.parent, signal.SIGTERM)  # torchrun, orphaned with us: it stops every worker
            stop(f"the launcher (pid {w.launcher[0]}) has exited", 128 + signal.SIGTERM)


def watch() -> bool:
    """Guard this worker process (see the module docstring); once per process. Returns whether it is
    guarded now. The signal handlers need the main thread; elsewhere only the parent and launcher checks
    run."""
    global _watch
    if _watch is not None and _watch.pid == os.getpid():
        return True
    w = _Watch()
    _set_parent_death_signal()
    if threading.current_thread() is threading.main_thread():
        for sig in _STOP_SIGNALS:
            if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
                continue  # nohup: leave it ignored
            signal.signal(sig, _on_signal)
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        try:
            previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        except ValueError:
            previous = None
        if previous == -1:
            w.wakeup = read_end
        else:  # someone else uses the wakeup fd: leave it to them
            if previous is not None:
                signal.set_wakeup_fd(previous)
            os.close(read_end)
            os.close(write_end)
    _watch = w
    threading.Thread(target=_poll, args=(w,), name="cosmos-nemo-lifeline", daemon=True).start()
    return True
