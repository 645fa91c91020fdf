"""Safe path joins: paths read from manifests and user files never escape their root."""

from __future__ import annotations

import os
from pathlib import Path


class UnsafePathError(ValueError):
    """A relative path from a manifest or list file points outside its root."""


def safe_join(root: str | os.PathLike, relative: str | os.PathLike) -> Path:
    """Join `relative` onto `root` and refuse results outside `root`.

    Absolute paths, `..` components that climb out, and symlinks resolving outside the root are all
    refused with an error naming both paths.
    """
    root_path = Path(root).resolve()
    rel = Path(relative)
    if rel.is_absolute():
        raise UnsafePathError(f"path {str(relative)!r} is absolute; manifest paths must be relative to {root_path}")
    joined = (root_path / rel).resolve()
    if joined != root_path and root_path not in joined.parents:
        raise UnsafePathError(f"path {str(relative)!r} resolves to {joined}, outside its root {root_path}")
    return joined
