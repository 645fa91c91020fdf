"""diffusers as an independent test peer, importable beside the CPU torch build.

The pip torchvision wheel that sits beside the CPU torch here cannot load its C++ ops (`operator
torchvision::nms does not exist`), so `import torchvision` fails, and diffusers' Cosmos transformer then
has no `transforms` for its padding-mask resize. That resize is pure Python
(`torchvision.transforms.functional.resize` with NEAREST on a tensor), so when the package cannot be
imported it is registered as a bare namespace package pointing at the installed files, without running
`torchvision/__init__.py` (which only loads the C++ ops). A working torchvision is used as is.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types


def _namespace_torchvision() -> None:
    if "torchvision" in sys.modules and sys.modules["torchvision"] is not None:
        return
    sys.modules.pop("torchvision", None)
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


def cosmos_transformer_class():
    """diffusers' `CosmosTransformer3DModel`, or None when diffusers (or the resize it needs) is missing."""
    _namespace_torchvision()
    try:
        from diffusers import CosmosTransformer3DModel
        from diffusers.models.transformers import transformer_cosmos
    except Exception:
        return None
    if not hasattr(transformer_cosmos, "transforms"):
        try:
            from torchvision import transforms

            transformer_cosmos.transforms = transforms
        except Exception:
            return None
    return CosmosTransformer3DModel
