"""Atomic file and folder writes: a crash leaves the old content or nothing, never a half-written file.

Every write goes to a hidden temporary name beside the target (same file system), is flushed and
fsynced, and is renamed over the target only once complete. On any error the temporary is removed.

    with atomic_path("out/model.safetensors") as tmp:   # any writer that takes a path
        save_file(tensors, str(tmp))
    atomic_write_text("out/latest_checkpoint.txt", "iter_000000200\n")
    with atomic_dir("out/export") as tmp_dir:            # a folder filled by several writers
        ...

Temporary names start with `.<name>.tmp-<pid>-`, which `is_temporary` recognises (resume and data prep
skip and clean them; `temporary_owner` reads the writer's process id back, so a cleanup spares the
temporaries of a writer still running).

`kill_point(name)` is a test hook for crash windows: when the environment variable `COSMOS_NEMO_KILL_AT`
equals `name`, the process SIGKILLs itself there (no cleanup code runs, as after a power cut or an OOM
kill). Every atomic write offers the point `write:<file name>`, after the temporary is complete and
before the rename; other modules name their own points.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
from pathlib import Path
from typing import Iterator

_TMP_MARK = ".tmp-"
_TMP_OWNER = re.compile(r"\.tmp-(\d+)-")
KILL_ENV = "COSMOS_NEMO_KILL_AT"


def _process_umask() -> int:
    mask = os.umask(0o022)  # read once, at import (single-threaded), and put back
    os.umask(mask)
    return mask


_UMASK = _process_umask()


def _share_like_umask(path: Path) -> None:
    """Give files that a writer created owner-only (safetensors' `save_file` makes 0600 files) the mode the
    process's umask gives any new file (0644 under umask 022), as `open()` would have; other modes are kept."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
    for f in files:
        if f.stat().st_mode & 0o777 == 0o600 and (0o666 & ~_UMASK) != 0o600:
            os.chmod(f, 0o666 & ~_UMASK)


def kill_point(name: str) -> None:
    """Test hook: SIGKILL this process here when `COSMOS_NEMO_KILL_AT` is `name` (see the module docstring)."""
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def temporary_name(path: str | os.PathLike, suffix: str = "") -> Path:
    """A fresh hidden name beside `path` (`suffix` keeps an extension some writers need, e.g. ".mp4")."""
    path = Path(path)
    return path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}-{secrets.token_hex(3)}{suffix}")


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether `path` is a temporary left by one of this module's writers (e.g. after a kill)."""
    name = Path(path).name
    return name.startswith(".") and _TMP_MARK in name


def temporary_owner(path: str | os.PathLike) -> int | None:
    """The process id that made the temporary `path` (None when the name does not say)."""
    m = _TMP_OWNER.search(Path(path).name)
    return int(m.group(1)) if m else None


def pid_alive(pid: int | None) -> bool:
    """Whether a process `pid` exists (another user's process counts as alive)."""
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(path: str | os.PathLike, owner: int | None = None) -> bool:
    """Whether a temporary (or staging folder of process `owner`) was left by a writer that is gone: its
    process no longer runs, or it is this process (which has no write in flight when it cleans up)."""
    pid = owner if owner is not None else temporary_owner(path)
    return pid is None or pid == os.getpid() or not pid_alive(pid)


def remove_path(path: str | os.PathLike) -> None:
    """Remove a file or a folder tree, whichever `path` is (nothing when it is gone)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_tree_atomically(path: str | os.PathLike) -> None:
    """Remove the folder `path` so that a kill at any moment leaves it whole or gone from its name: it is
    first renamed to a temporary name (one atomic step), then deleted (a kill then leaves a temporary,
    which cleanups recognise)."""
    path = Path(path)
    if not path.exists():
        return
    aside = temporary_name(path)
    os.replace(path, aside)
    fsync_dir(path.parent)
    kill_point(f"remove:{path.name}")
    remove_path(aside)


def fsync_file(path: Path) -> None:
    """Flush a written file's data to disk."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (renames, new files) to disk, where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_fsync = fsync_file


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "", overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write `path`'s content to; renamed onto `path` when the block succeeds.

    With `overwrite=False` an existing `path` is an error (checked before and at the rename)."""
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path, suffix)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"the writer of {path} wrote nothing to {tmp}")
        _fsync(tmp)
        _share_like_umask(tmp)
        if not overwrite and path.exists():
            raise FileExistsError(f"{path} appeared while it was being written")
        kill_point(f"write:{path.name}")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder; it replaces `path` (a folder) when the block succeeds.

    With `overwrite=False` an existing `path` is an error; with True the old folder is first renamed
    aside, the new one renamed in, and only then the old one removed: a crash at any point leaves the old
    or the new folder complete (under its own or a temporary name), never neither."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    tmp.mkdir()
    try:
        yield tmp
        _share_like_umask(tmp)
        old = None
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"{path} appeared while it was being written")
            old = temporary_name(path)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
