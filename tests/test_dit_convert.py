"""DiT checkpoint interop (models/dit/convert.py, `cosmos-nemo convert dit-import / dit-export`): bit-exact
round trips in the Cosmos (Predict1 and 2.x) and diffusers layouts, the released file shapes (net./net_ema./
logvar., DCP folders, diffusers folders), dist-ckpt at another TP, and strict, explained errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from cosmos_nemo.cli import main
from cosmos_nemo.parallel.launch import run_in_processes
from diffusers_peer import cosmos_transformer_class


def _random_cosmos_state(name: str, seed: int = 0, **overrides) -> dict:
    """A released-layout state of a named tiny config: a random model's export (so shapes come from the model)."""
    from cosmos_nemo import parallel
    from cosmos_nemo.models.dit import convert
    from cosmos_nemo.models.dit.config import dit_config
    from cosmos_nemo.models.dit.model import build_dit_model

    torch.manual_seed(seed)
    parallel.setup()
    try:
        cfg = dit_config(name, **overrides)
        model = build_dit_model(cfg)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.05)
        return {k: v.clone() for k, v in convert.export_released(model, cfg).items()}
    finally:
        parallel.teardown()


def _round_trip(path: str, name: str, layout: str | None, overrides: dict, ema: bool = False) -> dict:
    from cosmos_nemo import parallel
    from cosmos_nemo.models.dit import convert
    from cosmos_nemo.models.dit.config import dit_config
    from cosmos_nemo.models.dit.model import build_dit_model

    parallel.setup()
    try:
        cfg = dit_config(name, **overrides)
        model = build_dit_model(cfg)
        report = convert.load_released(model, cfg, path, ema=ema)
        out = convert.export_released(model, cfg, layout)
        return {"report": {k: v for k, v in report.items() if isinstance(v, (str, int, list, tuple))},
                "state": {k: v.clone() for k, v in out.items()}}
    finally:
        parallel.teardown()


@pytest.mark.parametrize("weights, layout", [("weights_cosmos.safetensors", None),
                                             ("weights_diffusers.safetensors", "diffusers")])
def test_golden_files_round_trip_bit_for_bit(golden, weights, layout):
    path = golden("dit", "dit7b_v2w") / weights
    result = _round_trip(str(path), "tiny_predict1_v2w", layout, {"logvar_head": False})
    original = load_file(str(path))
    assert result["state"].keys() == original.keys()
    assert all(torch.equal(result["state"][k], original[k]) for k in original)


def test_predict1_model_pt_with_logvar_and_ema(tmp_path):
    """A Predict1 model.pt: net.* beside logvar.*, and net_ema.*; either set loads, and exports back exactly."""
    from cosmos_nemo.models.dit.convert import with_cosmos_prefix

    reg = _random_cosmos_state("tiny_predict1_v2w", seed=1)
    ema = _random_cosmos_state("tiny_predict1_v2w", seed=2)
    assert {"logvar.0.freqs", "logvar.0.phases", "logvar.1.weight", "pos_embedder.seq"} <= set(reg)
    state = with_cosmos_prefix(reg)
    state.update({"net_ema." + k: v for k, v in ema.items() if not k.startswith("logvar.")})
    torch.save(state, tmp_path / "model.pt")
    for use_ema, expected in ((False, reg), (True, ema)):
        result = _round_trip(str(tmp_path), "tiny_predict1_v2w", None, {}, ema=use_ema)
        got = result["state"]
        assert result["report"]["weights"] == ("net_ema" if use_ema else "net")
        net_keys = [k for k in expected if not k.startswith("logvar.")]
        assert all(torch.equal(got[k], expected[k]) for k in net_keys)
        assert all(torch.equal(got[k], reg[k]) for k in reg if k.startswith("logvar."))  # logvar sits beside net.


def test_predict25_dcp_folder_and_cosmos2_layout(tmp_path):
    """Predict2.5 writes DCP folders (iter_*/model/.metadata) with net.* and net_ema.* and run-time buffers."""
    import torch.distributed.checkpoint as dcp

    reg = _random_cosmos_state("tiny_predict25", seed=3)
    ema = _random_cosmos_state("tiny_predict25", seed=4)
    assert "blocks.0.self_attn.q_proj.weight" in reg and "crossattn_proj.0.weight" in reg
    state = {"net." + k: v for k, v in reg.items()}
    state.update({"net_ema." + k: v for k, v in ema.items()})
    for net in ("net.", "net_ema."):  # buffers NVIDIA's files carry, dropped on import
        state[net + "pos_embedder.seq"] = torch.arange(128.0)
        state[net + "accum_video_sample_counter"] = torch.tensor(7)
    folder = tmp_path / "iter_000000100" / "model"
    dcp.save(state, checkpoint_id=str(folder), no_dist=True)
    result = _round_trip(str(tmp_path / "iter_000000100"), "tiny_predict25", None, {}, ema=True)
    assert result["report"]["layout"] == "cosmos2"
    assert sorted(result["report"]["dropped_buffers"]) == ["accum_video_sample_counter", "pos_embedder.seq"]
    assert result["state"].keys() == ema.keys()
    assert all(torch.equal(result["state"][k], ema[k]) for k in ema)


def test_cli_import_export_and_diffusers_from_pretrained(golden, tmp_path, capsys):
    """Golden Cosmos file -> dist-ckpt -> diffusers folder that diffusers loads strictly and runs exactly;
    -> back to the Cosmos layout bit for bit; diffusers folder -> Cosmos directly."""
    folder = golden("dit", "dit7b_v2w")
    flags = ["--model", "tiny_predict1_v2w", "--set", "logvar_head=False"]
    ckpt = tmp_path / "ckpt"
    assert main(["convert", "dit-import", "--checkpoint_path", str(folder / "weights_cosmos.safetensors"), *flags,
                 "--output", str(ckpt)]) == 0
    assert (ckpt / ".metadata").is_file()
    assert main(["convert", "dit-export", "--checkpoint", str(ckpt), *flags, "--layout", "diffusers",
                 "--output", str(tmp_path / "hf")]) == 0
    assert main(["convert", "dit-export", "--checkpoint", str(ckpt), *flags, "--no-prefix",
                 "--output", str(tmp_path / "back.safetensors")]) == 0
    original, back = load_file(str(folder / "weights_cosmos.safetensors")), load_file(str(tmp_path / "back.safetensors"))
    assert back.keys() == original.keys() and all(torch.equal(back[k], original[k]) for k in original)
    exported = load_file(str(tmp_path / "hf" / "diffusion_pytorch_model.safetensors"))
    reference = load_file(str(folder / "weights_diffusers.safetensors"))
    assert exported.keys() == reference.keys() and all(torch.equal(exported[k], reference[k]) for k in reference)
    recorded = json.loads((folder / "config.json").read_text())["diffusers"]["config"]
    written = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert {k: written[k] for k in recorded} == {k: (list(v) if isinstance(v, tuple) else v) for k, v in recorded.items()}

    # diffusers folder (no --model: its config.json defines the architecture) -> Cosmos model.pt with net. keys
    assert main(["convert", "dit-export", "--checkpoint", str(tmp_path / "hf"), "--output",
                 str(tmp_path / "model.pt")]) == 0
    model_pt = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(torch.equal(model_pt["net." + k], original[k]) for k in original)

    peer = cosmos_transformer_class()
    if peer is None:
        pytest.skip("diffusers is not installed: the from_pretrained check needs it")
    pytest.importorskip("accelerate", reason="diffusers' from_pretrained needs accelerate (setup.sh --dev installs it)")
    hf, info = peer.from_pretrained(str(tmp_path / "hf"), output_loading_info=True)
    hf.eval()
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    assert set(hf.state_dict()) == set(reference)
    i, o = load_file(str(folder / "inputs.safetensors")), load_file(str(folder / "outputs.safetensors"))
    with torch.no_grad():
        out = hf(hidden_states=i["x"], timestep=i["timesteps"], encoder_hidden_states=i["crossattn_emb"],
                 fps=int(i["fps"][0]), padding_mask=i["padding_mask"][:1],
                 condition_mask=i["condition_video_input_mask"]).sample
    assert (out - o["diffusers_output"]).abs().max() <= 1e-5


def _dist_ckpt_at_tp2(ckpt: str, folder) -> float:
    """A dist-ckpt written at TP=1 loads at TP=2 and gives the golden output."""
    torch.set_num_threads(1)
    from megatron.core import dist_checkpointing

    from cosmos_nemo import parallel
    from cosmos_nemo.models.dit.config import dit_config
    from cosmos_nemo.models.dit.model import build_dit_model

    parallel.setup(tensor_parallel=2)
    model = build_dit_model(dit_config("tiny_predict1_v2w", logvar_head=False)).eval()
    state = dist_checkpointing.load(model.sharded_state_dict(), ckpt, strict="raise_all")
    model.load_state_dict(state, strict=True)
    i, o = load_file(str(folder / "inputs.safetensors")), load_file(str(folder / "outputs.safetensors"))
    with torch.no_grad():
        out = model(i["x"], i["timesteps"], i["crossattn_emb"], fps=i["fps"], padding_mask=i["padding_mask"],
                    condition_mask=i["condition_video_input_mask"])
    parallel.teardown()
    return (out - o["output"]).abs().max().item()


@pytest.mark.medium
@pytest.mark.distributed
def test_dist_ckpt_loads_at_tp2(golden, tmp_path):
    folder = golden("dit", "dit7b_v2w")
    assert main(["convert", "dit-import", "--checkpoint_path", str(folder / "weights_diffusers.safetensors"),
                 "--model", "tiny_predict1_v2w", "--set", "logvar_head=False", "--output", str(tmp_path / "c")]) == 0
    for err in run_in_processes(_dist_ckpt_at_tp2, 2, str(tmp_path / "c"), folder):
        assert err <= 1e-4


# ---------------------------------------------------------------------------------------------------
# Errors


def test_bad_checkpoints_are_explained(tmp_path, capsys):
    state = _random_cosmos_state("tiny_predict1_t2w", seed=5)
    save_file(state, str(tmp_path / "t2w.safetensors"))

    def run(path, *flags):
        capsys.readouterr()
        code = main(["convert", "dit-import", "--checkpoint_path", str(path), *flags, "--output", str(tmp_path / "o")])
        return code, capsys.readouterr().out

    # a Text2World checkpoint into a Video2World model
    code, out = run(tmp_path / "t2w.safetensors", "--model", "tiny_predict1_v2w")
    assert code == 2 and "x_embedder.proj.1.weight" in out and "is a Text2World model" in out
    # a checkpoint of another size names the config it looks like
    code, out = run(tmp_path / "t2w.safetensors", "--model", "tiny_predict1_t2w", "--set", "num_layers=3")
    assert code == 2 and "blocks.block2" in out and "looks like tiny_predict1_t2w" in out
    # a missing key is listed
    broken = dict(state)
    del broken["blocks.block1.blocks.2.block.layer2.weight"]
    save_file(broken, str(tmp_path / "missing.safetensors"))
    code, out = run(tmp_path / "missing.safetensors", "--model", "tiny_predict1_t2w")
    assert code == 2 and "missing keys (1)" in out and "blocks.block1.blocks.2.block.layer2.weight" in out
    # a truncated file
    data = (tmp_path / "t2w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    code, out = run(tmp_path / "cut.safetensors", "--model", "tiny_predict1_t2w")
    assert code == 2 and "cut.safetensors: truncated" in out and "missing" in out  # names the file and the problem
    # not a DiT at all
    save_file({"layers.0.attention.wq.weight": torch.zeros(2, 2)}, str(tmp_path / "ar.safetensors"))
    code, out = run(tmp_path / "ar.safetensors", "--model", "tiny_predict1_t2w")
    assert code == 2 and "not a Cosmos DiT checkpoint" in out
    # --ema on a file without EMA weights
    code, out = run(tmp_path / "t2w.safetensors", "--model", "tiny_predict1_t2w", "--ema")
    assert code == 2 and "no EMA weights" in out
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_help_explains_every_flag(capsys):
    for command in ("dit-import", "dit-export"):
        with pytest.raises(SystemExit):
            main(["convert", command, "--help"])
        text = capsys.readouterr().out
        for flag in ("--model", "--set", "--output", "--overwrite", "--ema"):
            assert flag in text
