"""safetensors helpers: atomic writes and strict reads (no pickle anywhere).

`save_tensors` writes to a temporary name beside the target, fsyncs and renames, so a crash never leaves
a truncated file under the final name. `load_tensors` reads a file and, when `expected` keys are given,
refuses missing or unexpected keys with both lists in the message (the project's strict-weights rule).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

import torch


class TensorFileError(ValueError):
    """A tensor file is missing, unreadable, or does not hold the expected keys."""


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
                  metadata=dict(metadata) if metadata else None)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_tensors(path: str | os.PathLike, expected: Iterable[str] | None = None, device: str = "cpu") -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise TensorFileError(f"{path}: no such file")
    try:
        tensors = load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as e:
        raise TensorFileError(f"{path}: not a readable safetensors file ({e})") from e
    if expected is not None:
        want = set(expected)
        missing, unexpected = sorted(want - set(tensors)), sorted(set(tensors) - want)
        if missing or unexpected:
            raise TensorFileError(f"{path}: missing keys {missing}, unexpected keys {unexpected}")
    return tensors
