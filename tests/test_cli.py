"""The `cosmos-nemo` command collects its subcommands from an explicit list of modules: every one is
imported (a misspelled or broken module is an error, not a missing command), and none is left out."""

from __future__ import annotations

from pathlib import Path

import pytest

from cosmos_nemo import cli

ROOT = Path(__file__).resolve().parents[1]


def _subcommands(parser) -> dict:
    import argparse

    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_listed_room_registers_working_commands():
    commands = _subcommands(cli.build_parser())
    expected = {"quickstart", "sample-data", "prepare", "train-tokenizer", "train", "convert", "generate", "evaluate"}
    assert expected <= set(commands), sorted(expected - set(commands))
    for name, sub in commands.items():
        if _subcommands_or_none(sub) is None:
            assert sub.get_default("func") is not None, f"`cosmos-nemo {name}` has no func"


def _subcommands_or_none(parser):
    try:
        return _subcommands(parser)
    except StopIteration:
        return None


def test_no_commands_module_is_left_out():
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / "cosmos_nemo").rglob("commands.py")}
    assert modules, "no commands.py found"
    assert modules <= set(cli._COMMAND_ROOMS), f"not listed in cli._COMMAND_ROOMS: {sorted(modules - set(cli._COMMAND_ROOMS))}"


def test_a_misspelled_room_is_an_error(monkeypatch):
    monkeypatch.setattr(cli, "_COMMAND_ROOMS", cli._COMMAND_ROOMS + ("cosmos_nemo.evaluation.commands",))
    with pytest.raises(ModuleNotFoundError, match="cosmos_nemo.evaluation"):
        cli.build_parser()


def test_a_room_that_fails_to_import_is_an_error(monkeypatch, tmp_path):
    (tmp_path / "broken_room.py").write_text("import a_module_that_does_not_exist\n\ndef register(sub):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "_COMMAND_ROOMS", ("broken_room",))
    with pytest.raises(ModuleNotFoundError, match="a_module_that_does_not_exist"):
        cli.build_parser()


def test_help_exits_cleanly(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out
