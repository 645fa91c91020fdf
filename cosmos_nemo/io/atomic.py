"""Atomic file and folder writes: a crash leaves the old content or nothing, never a half-written file.

Every write goes to a hidden temporary name beside the target (same file system), is flushed and
fsynced, and is renamed over the target only once complete. On any error the temporary is removed.

    with atomic_path("out/model.safetensors") as tmp:   # any writer that takes a path
        save_file(tensors, str(tmp))
    atomic_write_text("out/latest_checkpoint.txt", "iter_000000200\n")
    with atomic_dir("out/export") as tmp_dir:            # a folder filled by several writers
        ...

Temporary names start with `.<name>.tmp-`, which `is_temporary` recognises (resume and data prep skip
and clean them).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterator

_TMP_MARK = ".tmp-"


def temporary_name(path: str | os.PathLike, suffix: str = "") -> Path:
    """A fresh hidden name beside `path` (`suffix` keeps an extension some writers need, e.g. ".mp4")."""
    path = Path(path)
    return path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}-{secrets.token_hex(3)}{suffix}")


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether `path` is a temporary left by one of this module's writers (e.g. after a kill)."""
    name = Path(path).name
    return name.startswith(".") and _TMP_MARK in name


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
        if not overwrite and path.exists():
            raise FileExistsError(f"{path} appeared while it was being written")
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
