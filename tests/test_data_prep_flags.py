"""The `prepare` flags are generated from the config dataclasses: every field has its flag, every flag its
field, the flag defaults are the field defaults, the reference spellings are kept with kebab-case aliases,
and `--help` explains each flag with its default."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from cosmos_nemo.cli import main as cli_main
from cosmos_nemo.data_prep import commands
from cosmos_nemo.data_prep.flags import add_flags, flag_names, from_args, setting, setting_fields
from cosmos_nemo.data_prep.settings import ARTokensConfig, PromptsConfig, TokenizeConfig, V2WConfig

CONFIGS = {"ar-tokens": ARTokensConfig, "v2w": V2WConfig, "prompts": PromptsConfig}

# The spellings of NVIDIA's prepare_dataset.py / video2world_prepare_dataset.py / prompt script, kept exactly.
REFERENCE_FLAGS = {
    "ar-tokens": ["--input_videos_dir", "--output_prefix", "--encoder_path", "--decoder_path", "--width", "--height",
                  "--num_context_frames", "--tokenizer_compression_factor"],
    "v2w": ["--input_jsonl", "--output_dir", "--encoder_path", "--decoder_path", "--width", "--height",
            "--num_context_frames", "--tokenizer_compression_factor", "--split_string"],
    "prompts": ["--dataset_path", "--prompt"],
}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    prepare = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["prepare"]
    return next(a for a in prepare._actions if isinstance(a, argparse._SubParsersAction)).choices


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_every_field_has_a_flag_whose_default_is_the_field_default(kind):
    cls, parser = CONFIGS[kind], _subparsers()[kind]
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(actions) == set(fields)  # and no flag without a field
    for name, f in fields.items():
        action = actions[name]
        assert tuple(action.option_strings) == flag_names(f)
        if f.default is dataclasses.MISSING:
            assert action.required, name
        else:
            assert not action.required and action.default == f.default, name
    # so a config from the bare required flags equals the dataclass's own defaults
    required = {"ar-tokens": ["--input_videos_dir", "i", "--output_prefix", "o"],
                "v2w": ["--input_jsonl", "i", "--output_dir", "o"], "prompts": ["--dataset_path", "d", "--prompt", "p"]}
    parsed = from_args(cls, parser.parse_args(required[kind]))
    given = {f.name: getattr(parsed, f.name) for f in setting_fields(cls) if f.default is dataclasses.MISSING}
    assert parsed == cls(**given)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_reference_spellings_with_kebab_aliases(kind):
    parser = _subparsers()[kind]
    by_flag = {o: a for a in parser._actions for o in a.option_strings}
    for flag in REFERENCE_FLAGS[kind]:
        assert flag in by_flag, flag
        kebab = flag.replace("_", "-")
        assert by_flag[kebab] is by_flag[flag], flag  # the alias sets the same field
        assert by_flag[flag].option_strings[0] == flag  # the reference spelling comes first
    if kind != "prompts":  # a new flag is kebab-case first, with an underscore alias
        assert by_flag["--batch-size"].option_strings == ["--batch-size", "--batch_size"]


def test_switches_and_types(tmp_path):
    parser = _subparsers()["ar-tokens"]
    args = parser.parse_args(["--input-videos-dir", "in", "--output-prefix", "out", "--no-progress", "--no_recursive",
                              "--allow-upscale", "--stride", "4", "--decode_threads", "0"])
    cfg = from_args(ARTokensConfig, args)
    assert (cfg.progress, cfg.recursive, cfg.captions, cfg.allow_upscale) == (False, False, True, True)
    assert cfg.input_videos_dir == Path("in") and (cfg.stride, cfg.decode_threads) == (4, 0)
    with pytest.raises(SystemExit):
        parser.parse_args(["--input_videos_dir", "i", "--output_prefix", "o", "--resize-mode", "stretch"])


def test_resolved_engine_settings():
    cfg = ARTokensConfig(input_videos_dir=Path("i"), output_prefix=Path("o"), device="cpu", workers=2)
    s = cfg.settings()
    assert (s.tokenizer, s.frames, s.height, s.width, s.stride) == ("nvidia/Cosmos-1.0-Tokenizer-DV8x16x16", 33, 640,
                                                                    1024, 33)
    assert (s.device, s.dtype, s.decode_threads) == ("cpu", "float32", 1)  # several workers: one decoder thread each
    assert cfg.settings() == V2WConfig(input_jsonl=Path("j"), output_dir=Path("o"), device="cpu", workers=2).settings()


def test_resize_choices_are_the_engines():
    from cosmos_nemo.data_prep.clips import RESIZE_MODES

    resize = next(f for f in dataclasses.fields(TokenizeConfig) if f.name == "resize_mode")
    assert resize.metadata["choices"] == RESIZE_MODES


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_help_explains_every_flag_and_shows_defaults(kind, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["prepare", kind, "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(CONFIGS[kind]):
        for flag in flag_names(f):
            assert flag in text, flag
        first_words = " ".join(f.metadata["help"].split()[:4])
        assert first_words in text, f.name
        if f.default is dataclasses.MISSING:
            assert f"{f.metadata['help'].split()[-1]} (required)" in text
        elif not isinstance(f.default, bool):
            assert f"(default: {f.default})" in text, f.name


def test_add_flags_refuses_unclear_switches():
    @dataclasses.dataclass(kw_only=True)
    class OnByDefault:
        progress: bool = setting(True, help="show progress")  # `--progress` could not turn it off

    with pytest.raises(TypeError, match="needs flags that turn it off"):
        add_flags(argparse.ArgumentParser(), OnByDefault)

    @dataclasses.dataclass(kw_only=True)
    class Percent:
        fraction: float = setting(0.5, help="share of clips in %")  # a literal % must survive argparse's formatting

    parser = argparse.ArgumentParser()
    add_flags(parser, Percent)
    assert "share of clips in %" in parser.format_help()
    assert parser.parse_args(["--fraction", "0.25"]).fraction == 0.25


def test_building_the_prepare_commands_imports_no_torch():
    code = ("import argparse, sys; from cosmos_nemo.data_prep import commands; "
            "commands.register(argparse.ArgumentParser().add_subparsers()); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
