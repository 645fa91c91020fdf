"""Tensor files: atomic safetensors writes, strict reads, and reading released weight files safely.

`save_tensors` writes to a temporary name beside the target, fsyncs and renames, so a crash never leaves
a truncated file under the final name. `load_tensors` reads a file and, when `expected` keys are given,
refuses missing or unexpected keys with both lists in the message (the project's strict-weights rule).

`read_state_dict` reads weights a user downloads (released `model.pt` / `.safetensors`): no pickle with
classes, optionally lazily (`LazyTensors`), and `strip_prefix` removes a key prefix such as `model.`.
These live here, below the models, so every model family's key map reads files the same way.

Every weight file the library reads goes through `read_safetensors` / `open_safetensors` / `read_weights`
here, which check a file before handing it to safetensors or torch: a missing, empty, truncated or
foreign file, or one without a needed tensor, is a `TensorFileError` that names the file and says which
of these it is (never a `SafetensorError` from deep inside).
"""

from __future__ import annotations

import json
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
        if metadata and len(metadata) > 1:
            _sort_metadata(tmp)
    return path


_METADATA_KEY = '{"__metadata__":'


def _sort_metadata(path: Path) -> None:
    """Rewrite the metadata of a safetensors file just written with its keys sorted, in place.

    safetensors serialises metadata from a hash map, in an order that changes from one process (or map) to
    the next, so the same tensors and metadata would give different bytes: a dataset would not be
    byte-identical across reruns. The sorted object has the same length, so only those bytes change; when
    anything is not as expected the file is left as written."""
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        text = f.read(n).decode("utf-8")
        if not text.startswith(_METADATA_KEY):
            return
        start = len(_METADATA_KEY)
        try:
            meta, end = json.JSONDecoder().raw_decode(text, start)
        except ValueError:
            return
        old = text[start:end].encode("utf-8")
        new = json.dumps(dict(sorted(meta.items())), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        if len(new) != len(old) or json.loads(new) != meta:
            return
        f.seek(8 + start)
        f.write(new)


_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the json header


def check_safetensors(path: str | os.PathLike) -> dict:
    """The json header of the safetensors file `path`, after checking that the file is whole: it exists,
    is not empty, starts with a header length and a json header, and holds every byte its tensors need.
    Raises `TensorFileError` saying what is wrong (no such file / empty / truncated / not a safetensors
    file / damaged)."""
    p = Path(path)
    if not p.exists():
        raise TensorFileError(f"{p}: no such file")
    if p.is_dir():
        raise TensorFileError(f"{p}: is a folder, not a safetensors file")
    size = p.stat().st_size
    if size == 0:
        raise TensorFileError(f"{p}: empty file (0 bytes), not a safetensors file; download or write it again")
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise TensorFileError(f"{p}: truncated or not a safetensors file: {size} bytes, shorter than the 8-byte "
                                  "header length every safetensors file starts with")
        n = int.from_bytes(head, "little")
        first = f.read(1)
        if first != b"{" or n < 2 or n > _MAX_HEADER:
            raise TensorFileError(f"{p}: not a safetensors file (its first bytes are not a header length and a json "
                                  f"header; {size} bytes, starting {head[:8]!r})")
        if 8 + n > size:
            raise TensorFileError(f"{p}: truncated: {size} bytes, shorter than its own {n}-byte header; download or "
                                  "write it again")
        raw = first + f.read(n - 1)
    try:
        header = json.loads(raw)
    except ValueError as e:
        raise TensorFileError(f"{p}: not a safetensors file, or a damaged one: its header is not json ({e})") from None
    if not isinstance(header, dict):
        raise TensorFileError(f"{p}: not a safetensors file: its header is not a json object")
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise TensorFileError(f"{p}: damaged safetensors header: tensor {key!r} has no valid data_offsets")
        end = max(end, offsets[1])
    need = 8 + n + end
    if need > size:
        raise TensorFileError(f"{p}: truncated: its tensors need {need} bytes, the file has {size} "
                              f"({need - size} missing); download or write it again")
    if need < size:
        raise TensorFileError(f"{p}: damaged: {size - need} bytes after the last tensor its header lists")
    return header


def check_safetensors_folder(folder: str | os.PathLike) -> None:
    """`check_safetensors` on every `*.safetensors` file of `folder` (a transformers / diffusers model
    folder, before its own loader reads it: reads headers only). Nothing when `folder` is not a folder."""
    folder = Path(folder)
    if folder.is_dir():
        for path in sorted(folder.glob("*.safetensors")):
            check_safetensors(path)


def _safetensors_error(path: Path, err: Exception) -> TensorFileError:
    return TensorFileError(f"{path}: not a readable safetensors file ({type(err).__name__}: {err})")


def read_safetensors(path: str | os.PathLike, expected: Iterable[str] | None = None, device: str = "cpu",
                     required: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, checked first (`check_safetensors`). `expected`: the exact key
    set (missing and unexpected keys are listed); `required`: keys that must be there (others allowed)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    check_safetensors(path)
    try:
        tensors = load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _safetensors_error(path, e) from e
    if expected is not None:
        want = set(expected)
        missing, unexpected = sorted(want - set(tensors)), sorted(set(tensors) - want)
        if missing or unexpected:
            raise TensorFileError(f"{path}: missing keys {missing}, unexpected keys {unexpected}")
    if required is not None:
        require_tensors(tensors, required, path)
    return tensors


def require_tensors(tensors: Mapping[str, torch.Tensor], keys: Iterable[str], path: str | os.PathLike) -> None:
    """Refuse `tensors` (read from `path`) unless every key of `keys` is there, naming the missing ones."""
    missing = sorted(set(keys) - set(tensors))
    if missing:
        shown = ", ".join(missing[:20]) + (f" ... and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise TensorFileError(f"{path}: missing tensor(s) {shown} ({len(tensors)} tensors in the file)")


def open_safetensors(path: str | os.PathLike):
    """`safetensors.safe_open(path)` (torch), after `check_safetensors`; errors are `TensorFileError`s."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    check_safetensors(path)
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _safetensors_error(path, e) from e


def read_weights(path: str | os.PathLike, nested: Sequence[str] = ("state_dict",)) -> dict[str, torch.Tensor]:
    """The tensors of a weights file a user gives: `.safetensors` (checked, see `check_safetensors`), else a
    torch file loaded with `weights_only=True` (a flat dict of tensors, or one nested under a key of
    `nested`). Anything unreadable is a `TensorFileError` naming the file and the problem."""
    p = Path(path)
    if p.suffix == ".safetensors":
        return read_safetensors(p)
    if not p.is_file():
        raise TensorFileError(f"{p}: no such file")
    if p.stat().st_size == 0:
        raise TensorFileError(f"{p}: empty file (0 bytes), not a weights file; download or write it again")
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, a pickle with classes, not a torch file at all
        import pickle

        detail = [line.strip() for line in str(err).splitlines() if "unsupported global" in line.lower()]
        if isinstance(err, pickle.UnpicklingError) and detail:
            raise TensorFileError(
                f"{p}: refused: it holds pickled objects other than tensors, which a weights_only=True load does not "
                f"run ({detail[0]}); convert it to safetensors where it is trusted"
            ) from err
        raise TensorFileError(
            f"{p}: not a readable weights-only torch file, or a truncated one ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''})"
        ) from err
    if isinstance(obj, Mapping):
        for key in nested:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise TensorFileError(f"{p}: holds a {type(obj).__name__}, not a state dict of tensors")
    bad = [f"{k}: {type(v).__name__}" for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise TensorFileError(f"{p}: has non-tensor entries: " + ", ".join(bad[:20]))
    return dict(obj)


def load_tensors(path: str | os.PathLike, expected: Iterable[str] | None = None, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A safetensors file this library wrote (`save_tensors`), strictly: see `read_safetensors`."""
    return read_safetensors(path, expected=expected, device=device)


# ---------------------------------------------------------------------------------------------------
# Reading released weight files (what a user downloads): safetensors, or weights-only torch files.


class LazyTensors(Mapping):
    """The tensors of a safetensors file, each read when accessed.

    A TP/PP rank then reads only the tensors it loads instead of the whole file (26 GB for a 13B model
    in bf16), and `shape(key)` reads no data at all, so a whole file can be checked before anything is
    read. `renamed` and `with_override` return new views (key renames, replaced tensors) without reading."""

    def __init__(self, path: str | os.PathLike, names: Optional[dict[str, str]] = None,
                 overrides: Optional[dict[str, torch.Tensor]] = None):
        self.path = str(path)
        with open_safetensors(self.path) as f:
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
        if key not in self._names:
            raise KeyError(key)
        with open_safetensors(self.path) as f:
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
        return read_safetensors(p)
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
