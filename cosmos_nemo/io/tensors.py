"""Tensor files: atomic safetensors writes, strict reads, and reading released weight files safely.

`save_tensors` writes to a temporary name beside the target, fsyncs and renames, so a crash never leaves
a truncated file under the final name. `load_tensors` reads a file and, when `expected` keys are given,
refuses missing or unexpected keys with both lists in the message (the project's strict-weights rule).

`read_state_dict` reads weights a user downloads (released `model.pt` / `.safetensors`): no pickle with
classes, optionally lazily (`LazyTensors`), and `strip_prefix` removes a key prefix such as `model.`.
These live here, below the models, so every model family's key map reads files the same way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence

import torch

from cosmos_nemo.io.atomic import atomic_path


class TensorFileError(ValueError):
    """A tensor file is missing, unreadable, or does not hold the expected keys."""


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
                  metadata=dict(metadata) if metadata else None)
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


# ---------------------------------------------------------------------------------------------------
# Reading released weight files (what a user downloads): safetensors, or weights-only torch files.


class LazyTensors(Mapping):
    """The tensors of a safetensors file, each read when accessed.

    A TP/PP rank then reads only the tensors it loads instead of the whole file (26 GB for a 13B model
    in bf16), and `shape(key)` reads no data at all, so a whole file can be checked before anything is
    read. `renamed` and `with_override` return new views (key renames, replaced tensors) without reading."""

    def __init__(self, path: str | os.PathLike, names: Optional[dict[str, str]] = None,
                 overrides: Optional[dict[str, torch.Tensor]] = None):
        from safetensors import safe_open

        self.path = str(path)
        with safe_open(self.path, framework="pt") as f:
            self._shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        self._names = names if names is not None else {k: k for k in self._shapes}
        self._overrides = dict(overrides or {})

    def renamed(self, rename: Callable[[str], str]) -> "LazyTensors":
        out = LazyTensors.__new__(LazyTensors)
        out.path, out._shapes = self.path, self._shapes
        out._names = {rename(k): v for k, v in self._names.items()}
        out._overrides = {rename(k): v for k, v in self._overrides.items()}
        return out

    def with_override(self, key: str, tensor: torch.Tensor) -> "LazyTensors":
        out = self.renamed(lambda k: k)
        out._overrides[key] = tensor
        return out

    def shape(self, key: str) -> tuple[int, ...]:
        if key in self._overrides:
            return tuple(self._overrides[key].shape)
        return self._shapes[self._names[key]]

    def __getitem__(self, key: str) -> torch.Tensor:
        if key in self._overrides:
            return self._overrides[key]
        from safetensors import safe_open

        with safe_open(self.path, framework="pt") as f:
            return f.get_tensor(self._names[key])

    def __contains__(self, key) -> bool:  # Mapping's default would read the tensor
        return key in self._names or key in self._overrides

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def tensor_shape(state: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    """The shape of `state[key]` without reading it when `state` is a lazy view."""
    shape = getattr(state, "shape", None)
    return tuple(shape(key)) if callable(shape) else tuple(state[key].shape)


def read_state_dict(path: str | os.PathLike, lazy: bool = False,
                    folder_names: Sequence[str] = ("model.safetensors", "model.pt")) -> Mapping[str, torch.Tensor]:
    """The tensors of a weights file: `.safetensors`, or a torch file loaded with `weights_only=True` and
    memory-mapped (a flat state dict, or one nested under "model"/"state_dict", as training scripts save).

    A folder is searched for `folder_names` in order. With `lazy`, a safetensors file is returned as a
    `LazyTensors` view that reads each tensor on access (a memory-mapped torch file is lazy already).
    Anything else (a pickle with classes, non-tensor entries) is refused: released files are untrusted."""
    p = Path(path)
    if p.is_dir():
        for name in folder_names:
            if (p / name).is_file():
                p = p / name
                break
        else:
            raise FileNotFoundError(f"{path} is a directory without {' or '.join(folder_names)}")
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    if p.suffix == ".safetensors":
        if lazy:
            return LazyTensors(p)
        from safetensors.torch import load_file

        return load_file(str(p))
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # a pickle with classes, or not a torch file at all
        raise TensorFileError(
            f"cannot read {p} as a weights-only torch checkpoint ({type(err).__name__}: {err}); "
            "only plain tensor state dicts are loaded (convert other files to safetensors first)"
        ) from err
    if isinstance(obj, Mapping):
        for nest in ("model", "state_dict"):
            if isinstance(obj.get(nest), Mapping):
                obj = obj[nest]
                break
    if not isinstance(obj, Mapping):
        raise TensorFileError(f"{p} holds a {type(obj).__name__}, not a state dict of tensors")
    bad = [f"{k}: {type(v).__name__}" for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise TensorFileError(f"{p} has non-tensor entries:\n" + "\n".join(bad[:20]))
    return dict(obj)


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> Mapping[str, torch.Tensor]:
    """`state` without the key prefix `prefix` (released Cosmos files carry `model.`).

    All keys must agree on having it or not: a mix means two files were merged wrongly, so it is refused
    with the keys that lack it. A lazy view stays lazy."""
    with_prefix = [k for k in state if k.startswith(prefix)]
    if not prefix or not with_prefix:
        return state  # unchanged and unread (a lazy or recording view stays one)
    if len(with_prefix) != len(state):
        without = sorted(k for k in state if not k.startswith(prefix))
        shown = "\n    ".join(without[:40]) + (f"\n    ... and {len(without) - 40} more" if len(without) > 40 else "")
        raise TensorFileError(
            f"checkpoint keys mix the {prefix!r} prefix and no prefix; keys without it ({len(without)}):\n    {shown}"
        )
    if isinstance(state, LazyTensors):
        return state.renamed(lambda k: k[len(prefix):])
    return {k[len(prefix):]: v for k, v in state.items()}
