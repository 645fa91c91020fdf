"""Dotted overrides on a recipe: `trainer.max_steps=100`, `data.paths=[/a,/b]`, `model.yarn.scale=4`, or
the same keys as sections of a TOML file (`apply_toml`).

The key is checked against the dataclass fields of the config it lands in; an unknown key is an error that
names the closest valid key. The value is read as YAML (so `true`, `null`, `[1,2]` work) and converted to
the field's annotated type; a value that does not fit is an error that says what type was expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import re
import types
import typing
from typing import Any, Iterable, Union

import fiddle as fdl
import yaml


class OverrideError(ValueError):
    """A dotted override that does not name a field, or a value that does not fit it."""


def _signature_types(fn_or_cls) -> dict[str, Any]:
    """{parameter: annotation} of a dataclass or function (what a fiddle Buildable of it accepts)."""
    try:
        hints = typing.get_type_hints(fn_or_cls)
    except Exception:  # unresolvable annotations: fall back to "anything"
        hints = {}
    if dataclasses.is_dataclass(fn_or_cls):
        return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(fn_or_cls) if f.init}
    return {name: hints.get(name, Any) for name in inspect.signature(fn_or_cls).parameters}


def _unwrap_optional(tp) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        if len(args) == 1:
            return args[0], optional
        return Union[tuple(args)], optional
    return tp, False


def valid_keys(cfg: fdl.Buildable, prefix: str = "") -> list[str]:
    """Every dotted key an override may set, nested configs included (`model.yarn.scale`)."""
    keys = []
    for name, tp in _signature_types(cfg.__fn_or_cls__).items():
        key = f"{prefix}{name}"
        value = cfg.__arguments__.get(name)  # unset fields keep their (possibly factory) default
        inner, _ = _unwrap_optional(tp)
        if isinstance(value, fdl.Buildable):
            keys.extend(valid_keys(value, key + "."))
        elif value is None and dataclasses.is_dataclass(inner):
            keys.extend(f"{key}.{f}" for f in _signature_types(inner))
            keys.append(key)
        else:
            keys.append(key)
    return keys


def _closest(key: str, candidates: Iterable[str]) -> str:
    candidates = list(candidates)
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.0)
    # Prefer a candidate with the same last component (`trainr.max_steps` -> `trainer.max_steps`).
    leaf = [c for c in candidates if c.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]]
    if leaf:
        close = difflib.get_close_matches(key, leaf, n=1, cutoff=0.0) or close
    return close[0] if close else ""


def parse_value(text: str, tp, where: str) -> Any:
    """`text` converted to annotation `tp`, or OverrideError naming `where` and the expected type."""
    try:
        value = yaml.safe_load(text) if text.strip() != "" else ""
    except yaml.YAMLError:
        value = text
    return _coerce(value, tp, where, text)


def _coerce(value, tp, where: str, text: str):
    inner, optional = _unwrap_optional(tp)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        if optional or tp is Any:
            return None
        raise OverrideError(f"{where} cannot be null (expected {_type_name(tp)})")
    if inner is Any:
        return value
    if dataclasses.is_dataclass(inner):
        presets = getattr(inner, "PRESETS", {})
        if isinstance(value, str) and value in presets:  # e.g. peft=lora
            from nemo_run import Config

            return Config(inner, **presets[value])
        named = f", one of {sorted(presets)}" if presets else ""
        raise OverrideError(f"{where} is a config: set its fields ({where}.<field>=...){named}, or set it to null")
    origin = typing.get_origin(inner)
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise OverrideError(f"{where} expects true/false, got {text!r}")
    if inner is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise OverrideError(f"{where} expects an integer, got {text!r}")
    if inner is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise OverrideError(f"{where} expects a number, got {text!r}")
    if inner is str:
        return text if not isinstance(value, str) else value
    if origin in (list, tuple) or inner in (list, tuple):
        if isinstance(value, str):  # a,b,c without brackets
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        if not isinstance(value, (list, tuple)):
            value = [value]
        args = typing.get_args(inner)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise OverrideError(f"{where} expects {len(args)} values, got {len(value)}: {text!r}")
            return tuple(_coerce(v, a, where, str(v)) for v, a in zip(value, args))
        elem = args[0] if args else Any
        items = [_coerce(v, elem, where, str(v)) for v in value]
        return tuple(items) if (origin is tuple or inner is tuple) else items
    if origin is dict or inner is dict:
        if not isinstance(value, dict):
            raise OverrideError(f"{where} expects a mapping such as {{key: value}}, got {text!r}")
        return value
    if origin is Union:  # several non-None types: the first that accepts the value
        for arg in typing.get_args(inner):
            try:
                return _coerce(value, arg, where, text)
            except OverrideError:
                continue
        raise OverrideError(f"{where} expects {_type_name(inner)}, got {text!r}")
    return value


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def split_override(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise OverrideError(f"an override is KEY=VALUE (e.g. trainer.max_steps=100), got {item!r}")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key:
        raise OverrideError(f"an override needs a key before '=': {item!r}")
    return key, text


def set_value(cfg: fdl.Buildable, key: str, value: Any, *, from_text: bool = False) -> None:
    """Set dotted `key` of `cfg` to `value` (a Python value, or text to parse when `from_text`), checked
    against the field's type; an unknown key names the closest valid one."""
    from nemo_run import Config

    parts = key.split(".")
    node = cfg
    for depth, name in enumerate(parts):
        types_here = _signature_types(node.__fn_or_cls__)
        if name not in types_here:
            guess = _closest(key, valid_keys(cfg))
            raise OverrideError(
                f"unknown key {key!r}" + (f"; the closest valid key is {guess!r}" if guess else "")
                + f". Valid keys under {'.'.join(parts[:depth]) or 'the recipe'}: {', '.join(types_here)}"
            )
        if depth == len(parts) - 1:
            tp = types_here[name]
            setattr(node, name, parse_value(value, tp, key) if from_text else _coerce(value, tp, key, repr(value)))
            return
        child = node.__arguments__.get(name)
        if child is None:
            inner, _ = _unwrap_optional(types_here[name])
            if not dataclasses.is_dataclass(inner):
                raise OverrideError(f"{'.'.join(parts[:depth + 1])} is a value, not a config: set it as a whole")
            child = Config(inner)  # e.g. model.yarn.scale=4 on a model without YaRN
            setattr(node, name, child)
        elif not isinstance(child, fdl.Buildable):
            raise OverrideError(
                f"{'.'.join(parts[:depth + 1])} is a value, not a config: set it as a whole "
                f"({'.'.join(parts[:depth + 1])}=...)"
            )
        node = child


def apply_overrides(cfg: fdl.Buildable, overrides: Iterable[str]) -> fdl.Buildable:
    """Apply `key=value` overrides in place (and return `cfg`)."""
    for item in overrides:
        key, text = split_override(item)
        set_value(cfg, key, text, from_text=True)
    return cfg


_ENV = re.compile(r"\$\{oc\.env:([A-Za-z_][A-Za-z0-9_]*)(?:,([^}]*))?\}")


def _resolve_env(value, where: str):
    if isinstance(value, str):
        def repl(match):
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise OverrideError(f"{where}: environment variable {name} is not set (write ${{oc.env:{name},DEFAULT}} for a default)")

        return _ENV.sub(repl, value)
    if isinstance(value, list):
        return [_resolve_env(v, where) for v in value]
    if isinstance(value, dict):
        return {k: _resolve_env(v, f"{where}.{k}") for k, v in value.items()}
    return value


def _flatten(table: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        # a table is a section of configs, except where the field itself is a mapping (checked when set)
        if isinstance(value, dict) and not dotted.endswith("extra_transformer_config"):
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def apply_toml(cfg: fdl.Buildable, path: str) -> fdl.Buildable:
    """Apply a TOML file of sections (`[trainer]`, `[model.yarn]`) in place; unknown keys and values of
    the wrong type are errors, `${oc.env:VAR}` / `${oc.env:VAR,default}` read the environment."""
    import tomllib

    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except FileNotFoundError:
        raise OverrideError(f"TOML file {path} not found") from None
    except tomllib.TOMLDecodeError as err:
        raise OverrideError(f"{path} is not valid TOML: {err}") from None
    for key, value in _flatten(table).items():
        set_value(cfg, key, _resolve_env(value, key))
    return cfg
