"""Recipes by name: `get_recipe("cosmos_ar_tiny_finetune")`, `list_recipes()`.

A recipe name says what it is: `<family>_<size>_<task>[_<variant>]`. Recipe arguments (the function's
typed keywords) are given as strings from the command line and converted by the function's annotations.
"""

from __future__ import annotations

import difflib
import inspect
import typing
from typing import Callable

import nemo_run as run

from cosmos_nemo.recipes import ar
from cosmos_nemo.recipes.overrides import OverrideError, parse_value

RECIPES: dict[str, Callable[..., run.Partial]] = {
    fn.__name__: fn
    for fn in (
        ar.cosmos_ar_4b_finetune,
        ar.cosmos_ar_12b_finetune,
        ar.cosmos_ar_5b_v2w_finetune,
        ar.cosmos_ar_13b_v2w_finetune,
        ar.cosmos_ar_4b_tokenizer_swap,
        ar.cosmos_ar_12b_tokenizer_swap,
        ar.cosmos_ar_5b_v2w_tokenizer_swap,
        ar.cosmos_ar_13b_v2w_tokenizer_swap,
        ar.cosmos_ar_tiny_finetune,
        ar.cosmos_ar_tiny_v2w_finetune,
        ar.cosmos_ar_tiny_tokenizer_swap,
    )
}


def list_recipes() -> list[tuple[str, str]]:
    """(name, first docstring line) of every recipe, sorted by name."""
    return [(name, (fn.__doc__ or "").strip().splitlines()[0]) for name, fn in sorted(RECIPES.items())]


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
            close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise OverrideError(f"recipe {name} has no argument {key!r}.{hint} Arguments: {', '.join(known)}")
        kwargs[key] = parse_value(text, known[key][0], f"{name}({key}=...)")
    return fn(**kwargs)
