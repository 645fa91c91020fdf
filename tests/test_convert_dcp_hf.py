"""`cosmos-nemo convert to-dcp` (the reference convert_model_to_dcp) and `convert export-hf` (export_model): a released
checkpoint -> the dist-ckpt folder `checkpoint.pretrained` starts from, and a training checkpoint + its run's
config.yaml -> Hugging Face safetensors (diffusers for the DiT), round-tripping bit-exactly at tiny size."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cosmos_nemo.cli import main


def _cli(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["convert", *[str(a) for a in args]])
    return code, capsys.readouterr().out


def _released(cfg, path: Path, seed: int = 0):
    """A released-layout checkpoint of random weights, and those weights in the family's layouts."""
    from cosmos_nemo import parallel
    from cosmos_nemo.checkpoint.convert import save_released
    from cosmos_nemo.models.family import family_of

    family = family_of(cfg)
    torch.manual_seed(seed)
    parallel.setup()
    try:
        model = family.build_model(cfg, True, True, torch.float32)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.05)
        released = {k: v.clone() for k, v in family.export_released(model, cfg).items()}
        hf = None
        if family.name == "dit":
            from cosmos_nemo.models.dit import convert

            hf = {k: v.clone() for k, v in convert.export_released(model, cfg, "diffusers").items()}
        out = _forward(cfg, model) if family.name == "dit" else None
    finally:
        parallel.teardown()
    save_released(released, path)
    return released, hf, out


def _forward(cfg, model) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 16, 2, 4, 4, generator=g), torch.randn(1, 5, cfg.crossattn_proj_in or cfg.context_dim, generator=g)
    cond = torch.zeros(1, 1, 2, 4, 4) if cfg.video2world else None
    with torch.no_grad():
        return model.eval()(x, torch.full((1,), 0.5), text, condition_mask=cond)


def test_dit_to_dcp_then_export_hf_round_trips_bit_exactly(tmp_path, capsys):
    from cosmos_nemo import parallel
    from cosmos_nemo.checkpoint import run as run_folder
    from cosmos_nemo.models.dit.config import dit_config
    from cosmos_nemo.models.dit.model import build_dit_model
    from cosmos_nemo.models.family import family_of

    cfg = dit_config("tiny_predict25")
    _, hf, expected = _released(cfg, tmp_path / "model.pt")
    code, out = _cli(capsys, "to-dcp", "--checkpoint-path", tmp_path / "model.pt", "--model", "tiny_predict25",
                     "-o", tmp_path / "dcp")
    assert code == 0, out
    assert (tmp_path / "dcp" / ".metadata").is_file() and (tmp_path / "dcp" / "config.yaml").is_file()

    # checkpoint.pretrained accepts the folder, and it holds the released weights (same outputs, bit for bit)
    parallel.setup()
    try:
        model = build_dit_model(cfg)
        note = run_folder.load_pretrained([model], family_of(cfg), cfg, str(tmp_path / "dcp"))
        assert "dist-ckpt" in note
        assert torch.equal(_forward(cfg, model), expected)
    finally:
        parallel.teardown()

    code, out = _cli(capsys, "export-hf", "--checkpoint-path", tmp_path / "dcp", "--config-file",
                     tmp_path / "dcp" / "config.yaml", "-o", tmp_path / "hf", "--verify")
    assert code == 0, out
    assert "verified" in out and "bit for bit" in out
    exported = load_file(str(tmp_path / "hf" / "diffusion_pytorch_model.safetensors"))
    assert sorted(exported) == sorted(hf)
    assert all(torch.equal(exported[k], hf[k]) for k in hf)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["num_layers"] == cfg.num_layers
    # and the diffusers folder is a released source again: the same outputs
    parallel.setup()
    try:
        model = build_dit_model(cfg)
        family_of(cfg).load_released(model, cfg, str(tmp_path / "hf"))
        assert torch.equal(_forward(cfg, model), expected)
    finally:
        parallel.teardown()


@pytest.mark.medium
def test_ar_to_dcp_then_export_hf_round_trips_bit_exactly(tmp_path, capsys):
    from cosmos_nemo.models.ar.config import ar_config

    cfg = ar_config("tiny")
    released, _, _ = _released(cfg, tmp_path / "model.pt", seed=3)
    assert _cli(capsys, "to-dcp", "--checkpoint-path", tmp_path / "model.pt", "--model", "tiny", "-o",
                tmp_path / "dcp")[0] == 0
    code, out = _cli(capsys, "export-hf", "--checkpoint_path", tmp_path / "dcp", "--config_file",
                     tmp_path / "dcp" / "config.yaml", "-o", tmp_path / "hf", "--verify")
    assert code == 0, out
    exported = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert sorted(exported) == sorted(released)
    assert all(torch.equal(exported[k], released[k]) for k in released)
    info = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert info["cosmos_nemo_family"] == "ar" and info["num_layers"] == cfg.num_layers
    # the export is readable like the config beside it (safetensors makes owner-only files; io/atomic widens them)
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "hf" / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    # and the export folder converts back without --model: its config.json names the AR model
    assert _cli(capsys, "to-dcp", "--checkpoint-path", tmp_path / "hf", "-o", tmp_path / "dcp2")[0] == 0
    code, out = _cli(capsys, "export-hf", "--checkpoint_path", tmp_path / "dcp2", "--config_file",
                     tmp_path / "dcp2" / "config.yaml", "-o", tmp_path / "hf2", "--verify")
    assert code == 0, out
    again = load_file(str(tmp_path / "hf2" / "model.safetensors"))
    assert sorted(again) == sorted(released) and all(torch.equal(again[k], released[k]) for k in released)


def test_export_hf_of_a_run_checkpoint_from_its_config_yaml(tmp_path, capsys):
    """RUN/checkpoints/iter_N + RUN/config.yaml (nothing else of the run) -> the diffusers folder; --ema exports
    the EMA weights; both verify."""
    from test_checkpoint_consolidate import _fake_run

    from cosmos_nemo.models.dit.config import dit_config

    run = _fake_run(tmp_path / "run", dit_config("tiny_predict2"), ema=True, step=4)
    iter_dir = run / "checkpoints" / "iter_000000004"
    for flag, name in (([], "model"), (["--ema"], "ema_model")):
        code, out = _cli(capsys, "export-hf", "--checkpoint-path", iter_dir, "--config-file", run / "config.yaml",
                         "-o", run / name, "--verify", *flag)
        assert code == 0, out
    regular = load_file(str(run / "model" / "diffusion_pytorch_model.safetensors"))
    averaged = load_file(str(run / "ema_model" / "diffusion_pytorch_model.safetensors"))
    key = next(k for k in regular if k.endswith("attn1.to_q.weight"))
    assert torch.equal(averaged[key], regular[key] * 0.5)  # _fake_run's ema/ is the weights halved


@pytest.mark.medium
def test_bad_inputs_are_explained(tmp_path, capsys):
    from cosmos_nemo.models.ar.config import ar_config

    _released(ar_config("tiny"), tmp_path / "model.pt")
    code, out = _cli(capsys, "to-dcp", "--checkpoint-path", tmp_path / "model.pt", "-o", tmp_path / "dcp")
    assert code == 2 and "--model is required" in out and not (tmp_path / "dcp").exists()
    code, out = _cli(capsys, "to-dcp", "--checkpoint-path", "nvidia/No-Such-Model-Here", "--model", "tiny", "-o",
                     tmp_path / "dcp")
    assert code == 2 and "cannot download 'nvidia/No-Such-Model-Here'" in out and "no file or folder" in out
    code, out = _cli(capsys, "to-dcp", "--checkpoint-path", "Cosmos-Nano", "-o", tmp_path / "dcp")
    assert code == 2 and "registered name" in out
    assert _cli(capsys, "to-dcp", "--checkpoint-path", tmp_path / "model.pt", "--model", "tiny", "-o",
                tmp_path / "dcp")[0] == 0
    # a config that does not describe the checkpoint
    (tmp_path / "wrong.yaml").write_text("model:\n  family: dit\n  name: tiny_predict25\n")
    from cosmos_nemo.models.dit.config import dit_config
    import dataclasses
    import yaml

    (tmp_path / "wrong.yaml").write_text(yaml.safe_dump({"model": json.loads(json.dumps(
        dataclasses.asdict(dit_config("tiny_predict25")), default=list))}))
    code, out = _cli(capsys, "export-hf", "--checkpoint-path", tmp_path / "dcp", "--config-file", tmp_path / "wrong.yaml",
                     "-o", tmp_path / "hf")
    assert code == 2 and "does not hold the weights" in out and not (tmp_path / "hf").exists()
    code, out = _cli(capsys, "export-hf", "--checkpoint-path", tmp_path, "--config-file", tmp_path / "dcp" / "config.yaml",
                     "-o", tmp_path / "hf")
    assert code == 2 and "not a cosmos-nemo checkpoint" in out
    code, out = _cli(capsys, "export-hf", "--checkpoint-path", tmp_path / "dcp", "--config-file",
                     tmp_path / "dcp" / "config.yaml", "-o", tmp_path / "hf", "--ema")
    assert code == 2 and "no ema/" in out


@pytest.mark.parametrize("command", ["to-dcp", "export-hf"])
def test_help_names_the_reference_command(command, capsys):
    with pytest.raises(SystemExit):
        main(["convert", command, "--help"])
    text = capsys.readouterr().out
    assert ("convert_model_to_dcp" if command == "to-dcp" else "export_model") in text


@pytest.mark.medium
@pytest.mark.parametrize("model", ["tiny_v2w", "tiny_predict1_v2w"])
def test_verify_covers_video2world_and_the_predict1_layout(model, tmp_path, capsys):
    """--verify on an AR Video2World model (text context) and a Predict1 DiT (Cosmos 1.0 keys, log-variance head,
    which a diffusers folder does not carry): weights and outputs reload bit for bit."""
    from cosmos_nemo.models.ar.config import NAMED_CONFIGS, ar_config
    from cosmos_nemo.models.dit.config import dit_config

    cfg = ar_config(model) if model in NAMED_CONFIGS else dit_config(model)
    _released(cfg, tmp_path / "model.pt", seed=5)
    assert _cli(capsys, "to-dcp", "--checkpoint-path", tmp_path / "model.pt", "--model", model, "-o",
                tmp_path / "dcp")[0] == 0
    code, out = _cli(capsys, "export-hf", "--checkpoint-path", tmp_path / "dcp", "--config-file",
                     tmp_path / "dcp" / "config.yaml", "-o", tmp_path / "hf", "--verify")
    assert code == 0 and "same outputs" in out, out
