"""Dataclass fields that carry their own command-line flags: one place per setting.

Each `prepare` setting is one field of its command's config dataclass (data_prep/settings.py), declared
with `setting(...)`: the default, the type (the annotation), the help text and the flag spellings live
there, and `add_flags` builds the argparse flags from them. Python callers and the command line therefore
get the same defaults, and `--help` cannot drift from the code.

    @dataclass(kw_only=True)
    class Config:
        output_prefix: Path = setting(flags=("--output_prefix", "--output-prefix"), help="output directory")
        workers: int = setting(1, help="parallel worker processes")
        progress: bool = setting(True, flags=("--no-progress", "--no_progress"), help="no progress bars")

Flag rules (DESIGN, "Flags"): a reference flag keeps its exact spelling first, with a kebab-case alias
(`flags=("--num_context_frames", "--num-context-frames")`); without `flags`, a new flag is the kebab-case
field name with an underscore alias. A field without a default is a required flag. A bool field is a
switch: default False gives a flag that turns it on; default True needs flags that say what turning it
off means (`--no-progress`).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Sequence, Union

_MISSING = dataclasses.MISSING


def setting(
    default: Any = _MISSING,
    *,
    help: str,
    flags: Sequence[str] | None = None,
    choices: Sequence[str] | None = None,
    metavar: str | None = None,
    nargs: int | str | None = None,
) -> Any:
    """A dataclass field that is also a command-line flag (see the module docstring). A `list[T]` field
    takes `nargs` values (default "+")."""
    metadata = {"help": help, "flags": tuple(flags) if flags else None, "choices": tuple(choices) if choices else None,
                "metavar": metavar, "nargs": nargs}
    if default is _MISSING:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_names(f: dataclasses.Field) -> tuple[str, ...]:
    """The flag spellings of field `f`: its own, or `--kebab-name` plus the `--snake_name` alias."""
    if f.metadata.get("flags"):
        return f.metadata["flags"]
    kebab, snake = "--" + f.name.replace("_", "-"), "--" + f.name
    return (kebab,) if kebab == snake else (kebab, snake)


def _value_type(annotation) -> type:
    """`int` for `int` and `int | None`; the one non-None type of an optional annotation."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"a setting holds one type (or None), got {annotation}")
        return args[0]
    return annotation


def setting_fields(cls) -> list[dataclasses.Field]:
    """The fields of `cls` declared with `setting`, required ones first (that is the order of `--help`)."""
    fields = [f for f in dataclasses.fields(cls) if "help" in f.metadata]
    return [f for f in fields if f.default is _MISSING] + [f for f in fields if f.default is not _MISSING]


def add_flags(parser: argparse.ArgumentParser, cls) -> None:
    """Add one flag per `setting` field of dataclass `cls` to `parser` (dest = the field name); the help
    shows each default (or that the flag is required)."""
    hints = typing.get_type_hints(cls)
    for f in setting_fields(cls):
        names = flag_names(f)
        help_text = f.metadata["help"].replace("%", "%%")  # argparse formats help with %-substitution
        kwargs: dict[str, Any] = {"dest": f.name}
        value_type = _value_type(hints[f.name])
        if value_type is bool:
            if f.default is _MISSING:
                raise TypeError(f"{cls.__name__}.{f.name}: a switch needs a default")
            if f.default and not f.metadata.get("flags"):
                raise TypeError(f"{cls.__name__}.{f.name}: a switch that is on by default needs flags that turn it off")
            kwargs.update(action="store_false" if f.default else "store_true", default=f.default)
        else:
            if f.default is _MISSING:
                kwargs["required"] = True
                help_text += " (required)"
            else:
                kwargs["default"] = f.default
                help_text += " (default: %(default)s)"
            if typing.get_origin(value_type) is list:
                (value_type,) = typing.get_args(value_type)
                kwargs["nargs"] = f.metadata.get("nargs") or "+"
                if isinstance(kwargs["nargs"], int) and f.metadata.get("metavar"):
                    kwargs["metavar"] = tuple(f.metadata["metavar"].split())
            if value_type is not str:
                kwargs["type"] = value_type
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
            if f.metadata.get("metavar") and "metavar" not in kwargs:
                kwargs["metavar"] = f.metadata["metavar"]
        parser.add_argument(*names, help=help_text, **kwargs)


def from_args(cls, args: argparse.Namespace, **changes):
    """An instance of `cls` from the parsed flags that `add_flags(parser, cls)` added (and `changes`)."""
    values = {f.name: getattr(args, f.name) for f in setting_fields(cls)}
    values.update(changes)
    return cls(**values)


__all__ = ["add_flags", "flag_names", "from_args", "setting", "setting_fields"]
