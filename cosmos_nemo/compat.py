"""Workarounds for the environments the library meets, kept in one place.

- `hide_unusable_torchvision()`: let `transformers` import when the installed torchvision cannot be.
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
