"""diffusers as an independent test peer, importable beside the CPU torch build.

The pip torchvision wheel that sits beside the CPU torch here cannot load its C++ ops (`operator
torchvision::nms does not exist`), so `import torchvision` fails, and diffusers' Cosmos transformer then
has no `transforms` for its padding-mask resize. That resize is pure Python
(`torchvision.transforms.functional.resize` with NEAREST on a tensor), so
`cosmos_nemo.compat.torchvision_namespace()` registers such a torchvision as a bare namespace package first.
"""

from __future__ import annotations


def cosmos_transformer_class():
    """diffusers' `CosmosTransformer3DModel`, or None when diffusers (or the resize it needs) is missing."""
    from cosmos_nemo.compat import torchvision_namespace

    torchvision_namespace()
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
