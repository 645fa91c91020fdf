"""Recipes by name: `get_recipe("cosmos_ar_tiny_finetune")`, `list_recipes()`.

A recipe name says what it is: `<family>_<size>_<task>[_<variant>]`. Most recipes take no arguments:
every field is changed by a dotted override. The few that do (the tokenizer-swap recipes' tokenizer and
clip shape, from which the latent grid is derived) get them as strings from the command line
(`--recipe-arg frames=17`), converted by the function's annotations.
"""

from __future__ import annotations

import difflib
import inspect
import typing
from typing import Callable

import nemo_run as run

from cosmos_nemo.recipes import ar, dit, vlm
from cosmos_nemo.recipes.overrides import OverrideError, parse_value, valid_keys

RECIPES: dict[str, Callable[..., run.Partial]] = {
    fn.__name__: fn
    for fn in (
        ar.cosmos_ar_4b_finetune,
        ar.cosmos_ar_4b_lora,
        ar.cosmos_ar_12b_finetune,
        ar.cosmos_ar_5b_v2w_finetune,
        ar.cosmos_ar_13b_v2w_finetune,
        ar.cosmos_ar_4b_tokenizer_swap,
        ar.cosmos_ar_12b_tokenizer_swap,
        ar.cosmos_ar_5b_v2w_tokenizer_swap,
        ar.cosmos_ar_13b_v2w_tokenizer_swap,
        ar.cosmos_ar_tiny_finetune,
        ar.cosmos_ar_tiny_lora,
        ar.cosmos_ar_tiny_v2w_finetune,
        ar.cosmos_ar_tiny_tokenizer_swap,
        *dit.RECIPES,
        *vlm.RECIPES,
    )
}


def list_recipes() -> list[tuple[str, str]]:
    """(name, first sentence of the docstring) of every recipe, sorted by name."""
    return [(name, _first_sentence(fn.__doc__ or "")) for name, fn in sorted(RECIPES.items())]


def _first_sentence(doc: str) -> str:
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    return paragraph.split(". ")[0].rstrip(".") + "." if paragraph else ""


def get_recipe(name: str) -> Callable[..., run.Partial]:
    if name in RECIPES:
        return RECIPES[name]
    close = difflib.get_close_matches(name, list(RECIPES), n=1, cutoff=0.3)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise KeyError(f"unknown recipe {name!r}{hint} Recipes: {', '.join(sorted(RECIPES))}")


def recipe_arguments(name: str) -> dict[str, tuple[object, object]]:
    """{argument: (annotation, default)} of a recipe function."""
    fn = get_recipe(name)
    hints = typing.get_type_hints(fn)
    return {p.name: (hints.get(p.name, str), p.default) for p in inspect.signature(fn).parameters.values()}


def build_recipe(name: str, arguments: dict[str, str] | None = None) -> run.Partial:
    """Call recipe `name` with `arguments` given as strings (`{"frames": "17"}`), converted by type."""
    fn = get_recipe(name)
    known = recipe_arguments(name)
    kwargs = {}
    for key, text in (arguments or {}).items():
        if key not in known:
            raise OverrideError(_unknown_argument(name, key, list(known)))
        kwargs[key] = parse_value(text, known[key][0], f"{name}({key}=...)")
    return fn(**kwargs)


def _unknown_argument(name: str, key: str, known: list[str]) -> str:
    """The error for a recipe argument that does not exist: the closest argument, or, when the name is a
    config field (`max_steps`, `lr`), the dotted override that sets it, since that is how fields change."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    if close:
        return f"recipe {name} has no argument {key!r}. Did you mean {close[0]!r}? Arguments: {', '.join(known)}"
    keys = valid_keys(get_recipe(name)())
    fields = [k for k in keys if k.rsplit(".", 1)[-1] == key] or difflib.get_close_matches(key, keys, n=1, cutoff=0.8)
    takes = f"Arguments: {', '.join(known)}" if known else "It takes no arguments"
    if fields:
        return (f"recipe {name} has no argument {key!r}: set the field as an override instead, e.g. "
                f"{fields[0]}=VALUE. {takes}")
    return f"recipe {name} has no argument {key!r}; fields are set as overrides (KEY=VALUE). {takes}"
