"""Stopping a run stops it: Ctrl-C (SIGINT), SIGTERM and a SIGKILL of `cosmos-nemo train` leave no training
process alive (checked in the process table), a second launch on a run folder a live job uses is refused,
a stale lock is taken over, and a resumed run's metrics.jsonl has each step once.

The fast tests drive the pieces directly (checkpoint/lock.py, parallel/lifeline.py, the logger's
metrics de-duplication); the slow ones launch the tiny AR recipe at TP=2 over 2 torchrun workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from cosmos_nemo.checkpoint import lock as run_lock
from cosmos_nemo.training.logger import drop_redone_metrics

ENV = dict(os.environ, PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1")


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.NoSuchProcess:
            pass
    return out


def _wait_gone(procs: list[psutil.Process], timeout: float) -> float:
    """Seconds until none of `procs` runs; fails naming the survivors after `timeout`."""
    start = time.monotonic()
    while _alive(procs):
        if time.monotonic() - start > timeout:
            survivors = [(p.pid, " ".join(p.cmdline())[:120]) for p in _alive(procs)]
            for proc in _alive(procs):  # leave nothing behind for the next test
                proc.kill()
            pytest.fail(f"still running {timeout:.0f} s after the stop: {survivors}")
        time.sleep(0.1)
    return time.monotonic() - start


# --------------------------------------------------------------------------------------------------
# the run-folder lock

_HOLD = ("import sys, time\nfrom cosmos_nemo.checkpoint.lock import acquire\nacquire(sys.argv[1])\n"
         "print('held', flush=True)\ntime.sleep(120)\n")


@pytest.mark.medium
def test_a_live_holder_is_named_and_a_dead_ones_lock_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(run_lock.RunFolderBusy, match=rf"live job: pid {holder.pid} on host {re.escape(socket.gethostname())}"):
            run_lock.acquire(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / run_lock.LOCK_FILE).is_file()  # a SIGKILL leaves the file ...
    lock = run_lock.acquire(tmp_path)  # ... which is stale: taken over
    assert lock.owned and lock.took_over["pid"] == holder.pid
    assert run_lock.read_lock(tmp_path)["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / run_lock.LOCK_FILE).exists()


def test_a_reused_pid_is_not_the_holder_and_other_hosts_go_by_heartbeat(tmp_path):
    path = tmp_path / run_lock.LOCK_FILE
    me = os.getpid()
    # our own pid, but a process that started at another time: the holder is gone
    ns = run_lock._pid_namespace()
    other = {"host": socket.gethostname(), "pid": me, "started": 1.0, "pid_namespace": ns, "token": "x"}
    assert not run_lock.holder_alive(other, path)
    # another host: alive while its heartbeat (the file's mtime) is fresh
    remote = {"host": "node-elsewhere", "pid": 1, "started": 1.0, "pid_namespace": ns, "token": "r",
              "since": "then", "command": "train"}
    path.write_text(json.dumps(remote))
    with pytest.raises(run_lock.RunFolderBusy, match="pid 1 on host node-elsewhere"):
        run_lock.acquire(tmp_path)
    old = time.time() - run_lock.STALE_AFTER_S - 10
    os.utime(path, (old, old))
    lock = run_lock.acquire(tmp_path)
    assert lock.took_over["host"] == "node-elsewhere"
    lock.release()


@pytest.mark.medium
def test_workers_borrow_their_launchers_lock(tmp_path, monkeypatch):
    launcher = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert launcher.stdout.readline().strip() == "held"
        monkeypatch.setenv(run_lock.TOKEN_ENV, run_lock.read_lock(tmp_path)["token"])
        borrowed = run_lock.acquire(tmp_path)
        assert not borrowed.owned
        borrowed.release()  # leaves the launcher's lock alone
        assert run_lock.read_lock(tmp_path)["pid"] == launcher.pid
    finally:
        launcher.kill()
        launcher.wait()


# --------------------------------------------------------------------------------------------------
# metrics.jsonl after a resume


def test_a_resume_drops_the_metrics_of_the_steps_it_redoes(tmp_path):
    path = tmp_path / "metrics.jsonl"
    first = [{"step": 0, "val/loss": 9.0}] + [{"step": s, "train/loss": 10.0 - s} for s in range(1, 8)]
    first.insert(5, {"step": 4, "val/loss": 5.5})  # validation at step 4, checkpoint at 4, killed at 7
    path.write_text("".join(json.dumps(e) + "\n" for e in first) + '{"step": 8, "train/lo')  # cut short by the kill
    assert drop_redone_metrics(path, 4) == 4  # steps 5, 6, 7 and the broken line
    assert [(e["step"], sorted(e)) for e in map(json.loads, path.read_text().splitlines())] == [
        (0, ["step", "val/loss"]), (1, ["step", "train/loss"]), (2, ["step", "train/loss"]),
        (3, ["step", "train/loss"]), (4, ["step", "train/loss"]), (4, ["step", "val/loss"])]
    assert drop_redone_metrics(path, 4) == 0
    # a fresh start (no checkpoint) redoes everything, the step-0 validation included
    assert drop_redone_metrics(path, 0) == 6 and path.read_text() == ""
    assert drop_redone_metrics(tmp_path / "absent.jsonl", 3) == 0


# --------------------------------------------------------------------------------------------------
# the workers' side: parent and launcher death

_WORKER = ("import sys, time\nfrom cosmos_nemo.parallel import lifeline\nlifeline.watch()\n"
           "lifeline.on_stop(lambda reason: print('last words:', reason, flush=True))\n"
           "print('watching', flush=True)\ntime.sleep(120)\n")
_PARENT = ("import subprocess, sys, time\np = subprocess.Popen([sys.executable, '-c', sys.argv[1]])\n"
           "print(p.pid, flush=True)\ntime.sleep(120)\n")


@pytest.mark.medium
def test_a_worker_stops_when_its_launcher_is_killed(tmp_path):
    launcher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    from cosmos_nemo.parallel import lifeline

    env = dict(ENV, **{lifeline.LAUNCHER_ENV: f"{launcher.pid}:{lifeline.start_time(launcher.pid)!r}"})
    worker = subprocess.Popen([sys.executable, "-c", _WORKER], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert worker.stdout.readline().strip() == "watching"
        launcher.kill()  # the launcher stays a zombie until reaped: that is dead too
        worker.wait(timeout=10)
        assert worker.returncode == 128 + signal.SIGTERM
        assert "last words: the launcher (pid" in worker.stdout.read()
    finally:
        launcher.kill()
        launcher.wait()
        worker.kill()


@pytest.mark.medium
def test_a_worker_stops_when_its_parent_is_killed_and_on_sigterm():
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, _WORKER], stdout=subprocess.PIPE, text=True, env=ENV)
    child = psutil.Process(int(parent.stdout.readline()))
    try:
        assert parent.stdout.readline().strip() == "watching"  # the child writes to the same pipe
        parent.kill()
        parent.wait()
        assert _wait_gone([child], timeout=10) < 10  # prctl(PR_SET_PDEATHSIG) or the parent poll
    finally:
        for proc in _alive([child]):
            proc.kill()
    worker = subprocess.Popen([sys.executable, "-c", _WORKER], stdout=subprocess.PIPE, text=True, env=ENV)
    assert worker.stdout.readline().strip() == "watching"
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=10)
    assert worker.returncode == 128 + signal.SIGTERM and "last words: received SIGTERM" in worker.stdout.read()


@pytest.mark.medium
def test_a_worker_whose_main_thread_never_runs_the_handler_still_stops_on_sigterm():
    # SIGTERM blocked in the main thread: as when it waits in native code (a collective, a kernel)
    stuck = _WORKER.replace("print('watching'", "import signal; signal.pthread_sigmask(signal.SIG_BLOCK, "
                            "[signal.SIGTERM])\nprint('watching'")
    worker = subprocess.Popen([sys.executable, "-c", stuck], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert worker.stdout.readline().strip() == "watching"
        start = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == 128 + signal.SIGTERM
        assert time.monotonic() - start < 10 and "last words: received SIGTERM" in worker.stdout.read()
    finally:
        worker.kill()
        worker.wait()


# --------------------------------------------------------------------------------------------------
# `cosmos-nemo train` with 2 torchrun workers


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    from cosmos_nemo.data.synthetic import write_pattern_dataset

    return str(write_pattern_dataset(tmp_path_factory.mktemp("stop") / "tokens", 16, grid=(2, 4, 6),
                                     vocab_size=64000, seed=1, pattern="motif"))


def _train_args(tokens: str, root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cosmos_nemo", "train", "cosmos_ar_tiny_finetune", f"data.paths=[{tokens}]",
            f"checkpoint.output_root={root}", "checkpoint.save_interval=2", "log.progress_bar=false",
            "log.tensorboard=false", "trainer.val_interval=0", *extra]


def _run_dir(root: Path) -> Path:
    return root / "cosmos_nemo" / "autoregressive" / "cosmos_ar_tiny_finetune"


def _start(tokens: str, root: Path, log: Path) -> subprocess.Popen:
    """A long local launch at TP=2 over 2 workers; returns once a checkpoint is complete."""
    with open(log, "w") as out:
        launcher = subprocess.Popen(_train_args(tokens, root, "trainer.max_steps=100000", "parallel.tensor=2",
                                                "--nproc", "2"),
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=ENV,
                                    start_new_session=True)
    pointer = _run_dir(root) / "checkpoints" / "latest_checkpoint.txt"
    deadline = time.monotonic() + 300
    while not pointer.is_file():
        if launcher.poll() is not None or time.monotonic() > deadline:
            launcher.kill()
            pytest.fail(f"the launch ended or stalled before its first checkpoint:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    return launcher


def _kill_all(launcher: subprocess.Popen) -> None:
    """Leave nothing behind when a test fails half-way."""
    try:
        procs = [psutil.Process(launcher.pid)] + psutil.Process(launcher.pid).children(recursive=True)
    except psutil.Error:
        procs = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    launcher.wait()


def _training_processes(launcher: subprocess.Popen) -> list[psutil.Process]:
    """The launcher and all its descendants: torchrun, its 2 workers and theirs (checkpoint writers)."""
    procs = psutil.Process(launcher.pid).children(recursive=True)
    torchrun = [p for p in procs if "torchrun" in " ".join(p.cmdline())]
    assert len(torchrun) == 1 and len(torchrun[0].children()) == 2, [" ".join(p.cmdline())[:100] for p in procs]
    return [psutil.Process(launcher.pid)] + procs


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_stops_torchrun_and_every_worker(tokens, tmp_path, sig):
    launcher = _start(tokens, tmp_path, tmp_path / "launch.log")
    try:
        procs = _training_processes(launcher)
        if sig == signal.SIGINT:
            # a second launch on the live run folder is refused, naming the holder
            second = subprocess.run(_train_args(tokens, tmp_path, "trainer.max_steps=4"), capture_output=True,
                                    text=True, env=ENV, stdin=subprocess.DEVNULL, timeout=300)
            assert second.returncode == 2
            assert f"in use by a live job: pid {launcher.pid} on host {socket.gethostname()}" in second.stderr, second.stderr
        launcher.send_signal(sig)  # Ctrl-C reaches the launcher alone: torchrun and its workers have their own sessions
        took = _wait_gone(procs, timeout=30)
    finally:
        _kill_all(launcher)
    assert launcher.returncode == 128 + sig
    log = (tmp_path / "launch.log").read_text()
    ckpts = _run_dir(tmp_path) / "checkpoints"
    latest = ckpts / (ckpts / "latest_checkpoint.txt").read_text().strip()
    assert f"stopped by {sig.name}: torchrun and its workers" in log, log[-3000:]
    assert f"the last complete checkpoint is {latest}" in log, log[-3000:]
    assert not (_run_dir(tmp_path) / run_lock.LOCK_FILE).exists()  # released
    print(f"{sig.name}: every training process gone {took:.1f} s after the signal")


@pytest.mark.slow
@pytest.mark.distributed
def test_sigkill_of_the_launcher_stops_the_workers_and_a_resume_logs_each_step_once(tokens, tmp_path):
    launcher = _start(tokens, tmp_path, tmp_path / "launch.log")
    try:
        procs = _training_processes(launcher)
        os.killpg(launcher.pid, signal.SIGKILL)  # the launcher's whole process group, as in the issue
        took = _wait_gone(procs, timeout=20)
    finally:
        _kill_all(launcher)
    print(f"SIGKILL: every training process gone {took:.1f} s after the launcher's death")
    run_dir = _run_dir(tmp_path)
    assert run_lock.read_lock(run_dir)["pid"] == launcher.pid  # left behind, stale
    latest = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest_checkpoint.txt").read_text().strip()
    resume_step = int(latest.name.split("_")[1])
    done = resume_step + 2
    time.sleep(1)
    steps_after_kill = {json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()}
    # resume in one process (the run was TP=2; dist-ckpt reshards), taking the stale lock over
    resumed = subprocess.run(_train_args(tokens, tmp_path, f"trainer.max_steps={done}", "--direct"),
                             capture_output=True, text=True, env=ENV, stdin=subprocess.DEVNULL, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    out = resumed.stdout + resumed.stderr
    assert f"resumed from {latest}" in out and f"pid {launcher.pid} on host" in out  # the stale lock, taken over
    entries = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [e["step"] for e in entries if "train/loss" in e]
    assert train_steps == list(range(1, done + 1)), (train_steps, sorted(steps_after_kill))
    assert [e["step"] for e in entries if "val/loss" in e] == [0]  # the step-0 validation once
    assert not (run_dir / run_lock.LOCK_FILE).exists()


@pytest.mark.slow
@pytest.mark.distributed
def test_sigterm_of_torchrun_running_a_post_training_command_stops_it(tokens, tmp_path):
    """`torchrun -m cosmos_nemo.post_training.general`: torchrun is the launcher; rank 0 says where the last
    complete checkpoint is."""
    log = tmp_path / "torchrun.log"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
           "cosmos_nemo.post_training.general", "--data_path", tokens, "--model_path", "none", "--model_size", "tiny",
           "--log_dir", str(tmp_path), "--tensor_model_parallel_size", "2", "--max_steps", "100000",
           "--save_every_n_steps", "2", "--global_batch_size", "2", "--split_string", "8,1,1",
           "log.progress_bar=false", "log.tensorboard=false"]
    with open(log, "w") as out:
        torchrun = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=dict(ENV, OMP_NUM_THREADS="1"), start_new_session=True)
    run_dir = tmp_path / "cosmos_nemo" / "autoregressive" / "general_tiny"
    pointer = run_dir / "checkpoints" / "latest_checkpoint.txt"
    try:
        deadline = time.monotonic() + 300
        while not pointer.is_file():
            assert torchrun.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        procs = [psutil.Process(torchrun.pid)] + psutil.Process(torchrun.pid).children(recursive=True)
        # the same command again (one process is enough to be refused) while this one runs
        alone = [sys.executable] + cmd[cmd.index("-m", 3):] + ["--tensor_model_parallel_size", "1"]
        second = subprocess.run(alone, capture_output=True, text=True, env=ENV, stdin=subprocess.DEVNULL, timeout=300)
        assert second.returncode == 2 and "is in use by a live job: pid" in second.stderr, second.stderr[-2000:]
        torchrun.send_signal(signal.SIGTERM)
        took = _wait_gone(procs, timeout=30)
    finally:
        _kill_all(torchrun)
    text = log.read_text()
    said = "training stopped (received SIGTERM): the last complete checkpoint is " + str(run_dir / "checkpoints")
    assert said in text, text[-3000:]
    print(f"torchrun SIGTERM: every training process gone {took:.1f} s after the signal")


# --------------------------------------------------------------------------------------------------
# megatron's checkpoint writer processes

_SAVE_THEN_DIE = """
import os, signal, sys, psutil, torch
from cosmos_nemo import parallel
from cosmos_nemo.checkpoint.dist import save_sharded
from megatron.core.dist_checkpointing import ShardedTensor

parallel.setup()
save_sharded({"w": ShardedTensor.from_rank_offsets("w", torch.randn(8, 8), replica_id=0)}, sys.argv[1])
print(" ".join(str(c.pid) for c in psutil.Process().children(recursive=True)), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.medium
def test_a_killed_trainers_checkpoint_writer_server_does_not_outlive_it(tmp_path):
    """megatron's dist-ckpt save keeps a multiprocessing server for its writers' results; a SIGKILLed trainer used
    to leave it running as an orphan. Its children (that server, the resource tracker) are gone within seconds."""
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with out.open("w") as stdout, err.open("w") as stderr:  # files, not pipes: an orphan would hold a pipe open
        code = subprocess.run([sys.executable, "-c", _SAVE_THEN_DIE, str(tmp_path / "ckpt")], env=ENV, stdout=stdout,
                              stderr=stderr, stdin=subprocess.DEVNULL, timeout=300).returncode
    assert code == -signal.SIGKILL, err.read_text()[-2000:]
    assert (tmp_path / "ckpt" / "metadata.json").is_file()
    pids = [int(p) for p in out.read_text().split()]
    assert pids, "the save started no helper process: nothing to check (megatron changed?)"
    children = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            children.append(psutil.Process(pid))
    _wait_gone(children, timeout=10)
