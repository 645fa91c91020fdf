"""One live job per run folder: `<run folder>/run.lock`.

    lock = acquire(folder)        # RunFolderBusy names the host and pid of the live job that holds it
    ...
    lock.release()                # also at interpreter exit; a kill leaves the file, which is then stale

The file says who holds the folder: host, pid, the process's start time, its pid namespace, the command
and a random token. It is created atomically (written beside it, then hard-linked into place; O_EXCL
where hard links are not supported), so a reader never sees half of it. Whether a holder is alive:
- on the same host and in the same pid namespace: its pid runs and started when the file says (a pid
  that a new process reuses is not mistaken for the holder);
- elsewhere (another node of a cluster, another container): the holder touches the file every
  `HEARTBEAT_S` seconds, and a file untouched for `STALE_AFTER_S` seconds is stale.
A stale lock (a job killed by SIGKILL, a crashed node) is taken over, and `RunLock.took_over` says
from whom.

A launcher that holds the folder for the workers it starts (`cosmos-nemo train`) passes the lock's token
in `$COSMOS_NEMO_RUN_LOCK`; a worker's `acquire` then finds the folder held for it and holds nothing.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from cosmos_nemo.parallel.lifeline import is_alive, start_time

LOCK_FILE = "run.lock"
TOKEN_ENV = "COSMOS_NEMO_RUN_LOCK"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0
_UNREADABLE_GRACE_S = 10.0  # a lock file that does not parse yet (O_EXCL fallback, being written)


class RunFolderBusy(RuntimeError):
    """The run folder is in use by a live job."""


def _pid_namespace() -> Optional[str]:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _describe_self(token: str) -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": start_time(os.getpid()),
            "pid_namespace": _pid_namespace(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(sys.argv)[:500], "token": token}


def read_lock(folder: str | os.PathLike) -> Optional[dict]:
    """The holder a run folder's lock names, or None when there is no (readable) lock."""
    try:
        info = json.loads((Path(folder) / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def holder_alive(info: dict, path: Path) -> bool:
    """Whether the job a lock names still runs (see the module docstring)."""
    local = info.get("host") == socket.gethostname() and info.get("pid_namespace") == _pid_namespace()
    if local:
        return is_alive(int(info.get("pid", -1)), info.get("started"))
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return False
    return age < STALE_AFTER_S


def _is_this_process(info: dict) -> bool:
    return (info.get("host") == socket.gethostname() and info.get("pid") == os.getpid()
            and info.get("pid_namespace") == _pid_namespace())


def describe(info: dict) -> str:
    return (f"pid {info.get('pid')} on host {info.get('host')} (since {info.get('since')}: "
            f"{info.get('command') or '?'})")


class RunLock:
    """A held (or, for a launcher's workers, borrowed) run-folder lock."""

    def __init__(self, path: Path, info: dict, owned: bool, took_over: Optional[dict] = None):
        self.path, self.info, self.owned, self.took_over = path, info, owned, took_over
        self._stop = threading.Event()
        if owned:
            atexit.register(self.release)
            threading.Thread(target=self._heartbeat, name="cosmos-nemo-run-lock", daemon=True).start()

    @property
    def token(self) -> str:
        return self.info["token"]

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                if self._still_mine():
                    os.utime(self.path)

    def _still_mine(self) -> bool:
        current = read_lock(self.path.parent)
        return current is not None and current.get("token") == self.token

    def release(self) -> None:
        """Remove the lock if this holds it (safe to call twice; a borrowed lock is left alone)."""
        self._stop.set()
        if not self.owned:
            return
        self.owned = False
        with contextlib.suppress(Exception):
            atexit.unregister(self.release)
        with contextlib.suppress(OSError):
            if self._still_mine():
                self.path.unlink()

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _create(path: Path, info: dict) -> bool:
    """Create the lock file atomically with `info`; False if one exists."""
    text = json.dumps(info, indent=1) + "\n"
    tmp = path.with_name(f".{path.name}.new-{info['token']}")
    tmp.write_text(text)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links on this file system
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return True
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _take_over(path: Path, stale: Optional[dict], token: str) -> None:
    """Move a stale lock out of the way, unless another process replaced it meanwhile."""
    grave = path.with_name(f".{path.name}.stale-{token}")
    try:
        os.rename(path, grave)
    except FileNotFoundError:
        return  # someone else took it over (or it was released): try again
    try:
        moved = json.loads(grave.read_text())
    except (OSError, ValueError):
        moved = None
    if stale is not None and moved != stale:
        # a fresh lock of another process replaced the stale one between our read and our rename: put it back
        with contextlib.suppress(OSError):
            os.link(grave, path)
    with contextlib.suppress(OSError):
        grave.unlink()


def acquire(folder: str | os.PathLike) -> RunLock:
    """Hold `folder` for this process, taking over a stale lock; RunFolderBusy if a live job holds it.
    A lock held for us by our launcher (its token in $COSMOS_NEMO_RUN_LOCK), or by this very process, is
    returned as is."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    token = secrets.token_hex(8)
    took_over = None
    for _ in range(5):
        info = _describe_self(token)
        if _create(path, info):
            return RunLock(path, info, owned=True, took_over=took_over)
        held = read_lock(folder)
        if held is None:
            try:
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:
                continue  # released meanwhile
            if age < _UNREADABLE_GRACE_S:
                time.sleep(0.2)
                continue
            _take_over(path, None, token)
            continue
        if held.get("token") and held.get("token") == os.environ.get(TOKEN_ENV):
            return RunLock(path, held, owned=False)  # our launcher holds it for us
        if _is_this_process(held):
            # this process holds it already (an earlier run in it that did not release): hold it again
            _take_over(path, held, token)
            continue
        if holder_alive(held, path):
            raise RunFolderBusy(
                f"the run folder {folder} is in use by a live job: {describe(held)}. Stop that job first, or "
                f"choose another run folder (checkpoint.name=...). A lock left by a job that is no longer "
                f"running is taken over automatically; this one is {path}"
            )
        took_over = held
        _take_over(path, held, token)
    raise RunFolderBusy(f"could not take the lock {path}: other processes keep replacing it")
