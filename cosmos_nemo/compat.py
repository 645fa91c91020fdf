"""Workarounds for the environments the library meets, kept in one place.

- `hide_unusable_torchvision()`: let `transformers` import when the installed torchvision cannot be.
- `torchvision_namespace()`: let `diffusers` import (and use torchvision's pure-Python transforms) when the
  installed torchvision cannot be.
"""

from __future__ import annotations

import importlib.util
import sys


def hide_unusable_torchvision() -> None:
    """Make `transformers` see no torchvision when torchvision cannot be imported.

    A torchvision built for another torch (e.g. CUDA torchvision beside CPU torch) fails at import with
    "operator torchvision::nms does not exist"; transformers imports it while importing any model class
    and then fails too. Text encoders and the benchmark's Llama peer do not need it, so a broken
    torchvision is hidden from this process (`importlib.util.find_spec` returns None for a module set to
    None in `sys.modules`). A working torchvision is left alone.
    """
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is None:
        return
    try:
        import torchvision  # noqa: F401
    except Exception:
        for mod in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[mod]
        sys.modules["torchvision"] = None  # type: ignore[assignment]


def torchvision_namespace() -> None:
    """Register an unusable torchvision as a bare namespace package before `diffusers` is imported.

    diffusers imports torchvision (and its Cosmos transformer resizes the padding mask with
    `torchvision.transforms.functional.resize`, pure Python); a torchvision built for another torch fails in
    its `__init__` while loading C++ ops none of that needs. So the package directory is registered without
    running `__init__.py`. A working torchvision is left alone; one hidden by `hide_unusable_torchvision` is
    replaced by the namespace."""
    import importlib.machinery
    import types

    if sys.modules.get("torchvision", False) is None:
        del sys.modules["torchvision"]
    if "torchvision" in sys.modules:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    try:
        import torchvision  # noqa: F401

        return
    except Exception:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
    module = types.ModuleType("torchvision")
    module.__path__ = list(spec.submodule_search_locations)
    module.__spec__ = importlib.machinery.ModuleSpec("torchvision", None, is_package=True)
    module.__spec__.submodule_search_locations = module.__path__
    module.__version__ = "namespace"
    sys.modules["torchvision"] = module
