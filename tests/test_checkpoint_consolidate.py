"""`cosmos-nemo convert dcp-to-pt` (checkpoint/consolidate.py): a training checkpoint as the consolidated files
NVIDIA's references name and write (model.pt with net.* + net_ema.*, model_ema_fp32.pt, model_ema_bf16.pt;
Predict1's iter_N_reg_model.pt / iter_N_ema_model.pt), in the released key layouts, loadable weights-only and
back into our DiT with the same outputs; explained errors and atomic writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cosmos_nemo.cli import main
from cosmos_nemo.parallel.launch import run_in_processes

FILES = {"model.pt", "model_ema_fp32.pt", "model_ema_bf16.pt"}


def _load(path) -> dict:
    return torch.load(str(path), map_location="cpu", weights_only=True)


def _convert(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["convert", "dcp-to-pt", *[str(a) for a in args]])
    return code, capsys.readouterr().out


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    """A tiny Predict2 DiT trained 3 steps with the power EMA (checkpoints at steps 2 and 3)."""
    from test_dit_training import write_dataset
    from test_ema_power import _train_with_ema

    root = tmp_path_factory.mktemp("consolidate")
    write_dataset(root / "data", n=4)
    out = run_in_processes(_train_with_ema, 1, str(root))[0]
    assert out["step"] == 3
    return Path(out["run_dir"])


def _fake_run(root: Path, cfg, ema: bool = True, peft: dict | None = None, step: int = 5) -> Path:
    """A run folder with one checkpoint of random weights (model/ and, with `ema`, a different ema/) and its
    config.yaml, written by the run-folder code, as training leaves them (the optimizer parts are not read)."""
    from cosmos_nemo import parallel
    from cosmos_nemo.checkpoint import dist as dist_ckpt
    from cosmos_nemo.checkpoint.run import POINTER, iter_name, write_run_files
    from cosmos_nemo.models.family import family_of

    torch.manual_seed(step)
    parallel.setup()
    try:
        model = family_of(cfg).build_model(cfg, True, True, torch.float32)
        folder = root / "checkpoints" / iter_name(step)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.05)
            dist_ckpt.save_model([model], folder / "model")
            if ema:
                for p in model.parameters():
                    p.mul_(0.5)
                dist_ckpt.save_model([model], folder / "ema")
    finally:
        parallel.teardown()
    write_run_files(root, dict(model=cfg, **({"peft": peft} if peft else {})), {})
    (root / "checkpoints" / POINTER).write_text(iter_name(step) + "\n")
    return root


def _forward(cfg, load) -> torch.Tensor:
    """The tiny DiT's output on fixed inputs, its weights filled by `load(model)`."""
    from cosmos_nemo import parallel
    from cosmos_nemo.models.dit.model import build_dit_model

    parallel.setup()
    try:
        model = build_dit_model(cfg).eval()
        load(model)
        g = torch.Generator().manual_seed(0)
        x, text = torch.randn(1, 16, 2, 4, 4, generator=g), torch.randn(1, 5, cfg.context_dim, generator=g)
        cond = torch.zeros(1, 1, 2, 4, 4) if cfg.video2world else None
        with torch.no_grad():
            return model(x, torch.full((1,), 0.5), text, condition_mask=cond)
    finally:
        parallel.teardown()


@pytest.mark.medium
def test_predict25_files_hold_the_regular_and_ema_weights(ema_run, tmp_path, capsys):
    """model.pt = net.* (regular) + net_ema.* (EMA), the EMA files = net_ema renamed net., fp32 and bf16; each
    equals what `dit-export` / `dit-export --ema` write from the same checkpoint."""
    iter_dir = ema_run / "checkpoints" / "iter_000000003"
    code, out = _convert(capsys, iter_dir / "model", tmp_path / "out")  # as the reference: $CKPT/model
    assert code == 0, out
    assert {p.name for p in (tmp_path / "out").iterdir()} == FILES  # nothing else, no temporaries
    for flags, name in (([], "reg.pt"), (["--ema"], "ema.pt")):
        assert main(["convert", "dit-export", "--checkpoint", str(iter_dir), "--model", "tiny_predict2", *flags,
                     "--output", str(tmp_path / name)]) == 0
    reg, ema = _load(tmp_path / "reg.pt"), _load(tmp_path / "ema.pt")
    model, fp32, bf16 = (_load(tmp_path / "out" / n) for n in ("model.pt", "model_ema_fp32.pt", "model_ema_bf16.pt"))

    assert reg.keys() == ema.keys() and all(k.startswith("net.") for k in reg)
    assert any(k.startswith("net.blocks.0.self_attn.") for k in reg)  # the Cosmos 2.x layout
    assert set(model) == set(reg) | {"net_ema." + k[len("net."):] for k in ema}
    for k, v in reg.items():
        assert v.dtype == torch.float32 and torch.equal(model[k], v), k
        assert torch.equal(model["net_ema." + k[len("net."):]], ema[k]), k
    assert fp32.keys() == bf16.keys() == ema.keys()
    assert all(fp32[k].dtype == torch.float32 and torch.equal(fp32[k], ema[k]) for k in ema)
    assert all(bf16[k].dtype == torch.bfloat16 and torch.equal(bf16[k], ema[k].to(torch.bfloat16)) for k in ema)
    assert max(float((reg[k] - ema[k]).abs().max()) for k in reg) > 0  # three steps: the EMA lags behind

    # a run folder (its latest checkpoint) and the iter_* folder name the same weights; iter_2 is older
    for source, name in ((ema_run, "run"), (iter_dir, "iter"), (ema_run / "checkpoints" / "iter_000000002", "old")):
        assert _convert(capsys, source, tmp_path / name)[0] == 0
    for name in ("run", "iter"):
        again = _load(tmp_path / name / "model.pt")
        assert again.keys() == model.keys() and all(torch.equal(again[k], model[k]) for k in model)
    old = _load(tmp_path / "old" / "model_ema_fp32.pt")
    assert any(not torch.equal(old[k], fp32[k]) for k in fp32)


@pytest.mark.medium
def test_files_load_back_into_the_dit_with_the_same_outputs(ema_run, tmp_path, capsys):
    from cosmos_nemo.checkpoint import dist as dist_ckpt
    from cosmos_nemo.checkpoint.run import read_model_config

    iter_dir = ema_run / "checkpoints" / "iter_000000003"
    assert _convert(capsys, iter_dir, tmp_path)[0] == 0
    family, cfg = read_model_config(ema_run)
    expected = {w: _forward(cfg, lambda m, w=w: dist_ckpt.load_model([m], iter_dir / w)) for w in ("model", "ema")}
    assert not torch.equal(expected["model"], expected["ema"])
    got = {
        "model.pt": _forward(cfg, lambda m: family.load_released(m, cfg, str(tmp_path / "model.pt"))),
        "model.pt --ema": _forward(cfg, lambda m: family.load_released(m, cfg, str(tmp_path / "model.pt"), ema=True)),
        "fp32": _forward(cfg, lambda m: family.load_released(m, cfg, str(tmp_path / "model_ema_fp32.pt"))),
        "bf16": _forward(cfg, lambda m: family.load_released(m, cfg, str(tmp_path / "model_ema_bf16.pt"))),
    }
    assert torch.equal(got["model.pt"], expected["model"])
    assert torch.equal(got["model.pt --ema"], expected["ema"]) and torch.equal(got["fp32"], expected["ema"])
    scale = float(expected["ema"].abs().max())
    assert float((got["bf16"] - expected["ema"]).abs().max()) < 0.05 * scale  # bf16 rounding of the weights


@pytest.mark.medium
def test_predict1_names_and_the_cosmos1_layout(tmp_path, capsys):
    """A Predict1 run (Cosmos 1.0 keys, log-variance head): Predict1's file names on request; model.pt keeps the
    regular logvar.* beside net.* / net_ema.*, and loads back (regular or EMA) exactly."""
    from cosmos_nemo.models.dit.config import dit_config

    cfg = dit_config("tiny_predict1_v2w")
    run = _fake_run(tmp_path / "p1", cfg, step=7)
    iter_dir = run / "checkpoints" / "iter_000000007"
    code, out = _convert(capsys, iter_dir, tmp_path / "names", "--predict1-names")
    assert code == 0, out
    names = {p.name for p in (tmp_path / "names").iterdir()}
    assert names == {"iter_000000007_reg_model.pt", "iter_000000007_ema_model.pt"}
    reg = _load(tmp_path / "names" / "iter_000000007_reg_model.pt")
    ema = _load(tmp_path / "names" / "iter_000000007_ema_model.pt")
    assert reg.keys() == ema.keys() and "net.blocks.block0.blocks.0.block.attn.to_q.0.weight" in reg
    assert "logvar.1.weight" in reg and all(k.startswith(("net.", "logvar.")) for k in reg)
    assert all(v.dtype == torch.float32 for v in (*reg.values(), *ema.values()))

    assert _convert(capsys, iter_dir, tmp_path / "p25")[0] == 0
    model, fp32 = _load(tmp_path / "p25" / "model.pt"), _load(tmp_path / "p25" / "model_ema_fp32.pt")
    assert fp32.keys() == ema.keys() and all(torch.equal(fp32[k], ema[k]) for k in ema)
    assert set(model) == set(reg) | {"net_ema." + k[4:] for k in ema if k.startswith("net.")}
    assert torch.equal(model["logvar.1.weight"], reg["logvar.1.weight"])  # the regular head, as the references
    assert not torch.equal(model["net.x_embedder.proj.1.weight"], model["net_ema.x_embedder.proj.1.weight"])

    from cosmos_nemo.checkpoint import dist as dist_ckpt
    from cosmos_nemo.models.dit.convert import load_released

    for weights, ema_flag in (("model", False), ("ema", True)):
        expected = _forward(cfg, lambda m: dist_ckpt.load_model([m], iter_dir / weights))
        got = _forward(cfg, lambda m: load_released(m, cfg, tmp_path / "p25" / "model.pt", ema=ema_flag))
        assert torch.equal(got, expected), weights


@pytest.mark.medium
def test_ar_runs_get_their_released_layout(tmp_path, capsys):
    from cosmos_nemo.models.ar.config import ar_config

    cfg = ar_config("tiny")
    run = _fake_run(tmp_path / "ar", cfg)
    assert _convert(capsys, run, tmp_path / "out")[0] == 0
    assert {p.name for p in (tmp_path / "out").iterdir()} == FILES
    model, bf16 = _load(tmp_path / "out" / "model.pt"), _load(tmp_path / "out" / "model_ema_bf16.pt")
    assert model.keys() == bf16.keys() and all(k.startswith("model.") for k in model)
    assert "model.layers.0.attention.wq.weight" in model
    assert all(v.dtype == torch.bfloat16 for v in bf16.values())
    code, out = _convert(capsys, run, tmp_path / "p1", "--predict1-names")
    assert code == 2 and "'ar' run" in out
    plain = _fake_run(tmp_path / "ar_plain", cfg, ema=False)
    assert _convert(capsys, plain, tmp_path / "plain")[0] == 0
    assert {p.name for p in (tmp_path / "plain").iterdir()} == {"model.pt"}


@pytest.mark.medium
def test_bad_inputs_are_explained_and_nothing_is_half_written(tmp_path, capsys, monkeypatch):
    from cosmos_nemo.models.dit.config import dit_config

    cfg = dit_config("tiny_predict25")
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.pt").write_bytes(b"x")
    code, out = _convert(capsys, tmp_path / "empty", tmp_path / "o")
    assert code == 2 and "not a training checkpoint" in out
    code, out = _convert(capsys, tmp_path / "file.pt", tmp_path / "o")
    assert code == 2 and "is a file" in out
    code, out = _convert(capsys, tmp_path / "absent", tmp_path / "o")
    assert code == 2 and "does not exist" in out

    # no EMA: the reference's error, with what to do; --no-ema writes the regular weights alone
    run = _fake_run(tmp_path / "noema", cfg, ema=False)
    code, out = _convert(capsys, run, tmp_path / "o")
    assert code == 2 and "no ema/ checkpoint" in out and "trainer.ema_sigma_rel" in out and "--no-ema" in out
    assert not (tmp_path / "o").exists()
    assert _convert(capsys, run, tmp_path / "o", "--no-ema")[0] == 0
    assert {p.name for p in (tmp_path / "o").iterdir()} == {"model.pt"}
    assert all(k.startswith("net.") for k in _load(tmp_path / "o" / "model.pt"))
    assert _convert(capsys, run, tmp_path / "p1", "--no-ema", "--predict1-names")[0] == 0
    assert {p.name for p in (tmp_path / "p1").iterdir()} == {"iter_000000005_reg_model.pt"}

    # outputs that exist are kept unless --overwrite
    run = _fake_run(tmp_path / "ema", cfg)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "model_ema_bf16.pt").write_bytes(b"old")
    code, out = _convert(capsys, run, tmp_path / "x")
    assert code == 2 and "--overwrite" in out and (tmp_path / "x" / "model_ema_bf16.pt").read_bytes() == b"old"
    assert {p.name for p in (tmp_path / "x").iterdir()} == {"model_ema_bf16.pt"}
    assert _convert(capsys, run, tmp_path / "x", "--overwrite")[0] == 0
    assert _load(tmp_path / "x" / "model_ema_bf16.pt")

    # a checkpoint outside a run needs --model; a wrong one is explained
    model_dir = run / "checkpoints" / "iter_000000005" / "model"
    alone = tmp_path / "alone" / "iter_000000005"
    alone.mkdir(parents=True)
    import shutil

    for part in ("model", "ema"):
        shutil.copytree(model_dir.parent / part, alone / part)
    code, out = _convert(capsys, alone, tmp_path / "a")
    assert code == 2 and "--model" in out
    assert _convert(capsys, alone, tmp_path / "a", "--model", "tiny_predict25")[0] == 0
    code, out = _convert(capsys, alone, tmp_path / "b", "--model", "tiny_predict2")
    assert code == 2 and "does not hold the weights" in out

    # a failure while writing leaves neither final files nor temporaries
    real_save = torch.save

    def failing_save(obj, path, *args, **kwargs):
        if "model_ema_fp32" in str(path):  # the second of the three files
            raise OSError("disk full")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    code, out = _convert(capsys, run, tmp_path / "crash")
    assert code == 2 and "disk full" in out
    assert list((tmp_path / "crash").iterdir()) == []


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["convert", "dcp-to-pt", "--help"])
    text = capsys.readouterr().out
    for flag in ("CHECKPOINT_DIR", "OUT_DIR", "--no-ema", "--predict1-names", "--model", "--set", "--overwrite",
                 "model_ema_fp32.pt", "model_ema_bf16.pt", "net_ema."):
        assert flag in text
