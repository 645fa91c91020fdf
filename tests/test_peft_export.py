"""A DiT LoRA adapter as a diffusers / PEFT LoRA file (cosmos_nemo/peft/export.py), proven in diffusers.

- diffusers' `CosmosTransformer3DModel` with our exported base weights and the exported LoRA loaded through
  its Cosmos LoRA loader (the path `Cosmos2_5_PredictBasePipeline.load_lora_weights` takes) computes what our
  LoRA model computes, at alpha / rank = 2 (so the scale must travel in the file);
- export -> `load_diffusers_lora` gives the same adapters bit for bit (also a baked-scale and a bf16 file);
- a file for other blocks or other targets, or missing an adapter, is refused, nothing applied;
- TP=2 writes the TP=1 file and reads it back;
- `convert lora-export` / `lora-merge` on a tiny LoRA training run.
"""

from __future__ import annotations

import pytest
import torch

from cosmos_nemo.parallel.launch import run_in_processes
from diffusers_peer import cosmos_transformer_class
from test_peft_lora import _randomise_adapters

TINY = "tiny_predict2"
SIX = ["q_proj", "k_proj", "v_proj", "output_proj", "mlp.layer1", "mlp.layer2"]
T = torch.as_tensor  # results come back from run_in_processes as numpy arrays


def _needs_diffusers():
    if cosmos_transformer_class() is None:  # first: it makes a broken torchvision importable for peft too
        pytest.skip("diffusers (CosmosTransformer3DModel) is not installed")
    pytest.importorskip("peft", reason="peft is not installed (diffusers' LoRA loading needs it)")


def _base_model(name: str = TINY, **overrides):
    """A tiny DiT with random base weights (per-rank draws: the TP test compares adapters only)."""
    from cosmos_nemo.models.dit.config import dit_config
    from cosmos_nemo.models.dit.model import build_dit_model

    cfg = dit_config(name, **overrides)
    model = build_dit_model(cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model, cfg


def _add_lora(model, seed: int = 7, rank: int = 4, alpha: float = 8, targets=None):
    """LoRA (alpha / rank = 2 by default) with random A and B, the same full matrices at any TP."""
    from cosmos_nemo.peft.lora import LoRAConfig, apply_lora

    apply_lora(model, LoRAConfig(targets=list(targets or SIX), rank=rank, alpha=alpha), seed=5)
    _randomise_adapters(model, seed=seed)
    return model


def _lora_model(name: str = TINY, seed: int = 7, rank: int = 4, alpha: float = 8, targets=None, **overrides):
    model, cfg = _base_model(name, **overrides)
    return _add_lora(model, seed, rank, alpha, targets), cfg


def _adapters(model) -> dict:
    from cosmos_nemo.peft.lora import lora_adapters

    return {f"{name}.{part}.{w}": p.detach().clone() for name, a in lora_adapters(model).items()
            for part, pair in a.pairs().items() for w, p in (("A", pair.lora_A), ("B", pair.lora_B))}


# ---------------------------------------------------------------------------------------------------
# diffusers computes what we compute


def _diffusers_lora_parity(tmp: str) -> dict:
    peer_class = cosmos_transformer_class()  # before peft / diffusers' loaders: the torchvision namespace
    from diffusers.loaders.lora_pipeline import CosmosLoraLoaderMixin

    from cosmos_nemo import parallel
    from cosmos_nemo.models.dit import convert
    from cosmos_nemo.peft.export import save_diffusers_lora
    from cosmos_nemo.peft.lora import merge_lora

    torch.set_num_threads(2)
    out = {}
    for name in ("tiny_predict2", "tiny_predict25"):
        parallel.setup(seed=3)
        ours, cfg = _base_model(name)
        # the base, exported through the diffusers key map, into diffusers' own model
        peer = peer_class(**{k: v for k, v in convert.diffusers_config(cfg).items() if not k.startswith("_")}).eval()
        peer.load_state_dict(convert.export_released(ours, cfg, "diffusers"), strict=True)
        for mod in peer.modules():  # diffusers builds the q/k RMSNorms with eps 1e-5; NVIDIA's networks use 1e-6
            if type(mod).__name__ == "RMSNorm" and getattr(mod, "eps", None) == 1e-5:
                mod.eps = 1e-6
        g = torch.Generator().manual_seed(1)
        B, F, H, W = 2, 3, 8, 12
        x = torch.randn(B, 16, F, H, W, generator=g)
        t = torch.rand(B, F, generator=g)  # per-frame, in [0, 1] as diffusers takes them
        text = torch.randn(B, 10, cfg.crossattn_proj_in or cfg.context_dim, generator=g)
        cond = torch.zeros(B, 1, F, H, W)
        cond[0, :, :1] = 1
        pad = torch.zeros(1, 1, H * 8, W * 8)
        ours_t = t / cfg.timestep_scale if cfg.timestep_scale != 1 else t  # Predict2.5's net takes 0..1000 x 0.001

        def run_ours():
            with torch.no_grad():
                return ours(x, ours_t, text, padding_mask=pad, condition_mask=cond)

        def run_peer():
            with torch.no_grad():
                return peer(x, t.view(B, 1, F, 1, 1), text, condition_mask=cond, padding_mask=pad, fps=None).sample

        base, peer_base = run_ours(), run_peer()
        _add_lora(ours)
        path = f"{tmp}/{name}.safetensors"
        save_diffusers_lora(ours, path)
        adapted = run_ours()
        merge_lora(ours)
        merged = run_ours()
        # what pipe.load_lora_weights(path) does: lora_state_dict (file + metadata), load_lora_into_transformer
        state, metadata = CosmosLoraLoaderMixin.lora_state_dict(path, return_lora_metadata=True)
        CosmosLoraLoaderMixin.load_lora_into_transformer(state, transformer=peer, metadata=metadata)
        peer_lora = run_peer()
        config = next(iter(peer.peft_config.values()))
        out[name] = {"base_err": (peer_base - base).abs().max().item(),
                     "lora_err": (peer_lora - merged).abs().max().item(),
                     "merged_vs_hooks": (merged - adapted).abs().max().item(),
                     "effect": (peer_lora - peer_base).abs().max().item(), "r": config.r, "alpha": config.lora_alpha,
                     "keys": sorted(state)}
        parallel.teardown()
    return out


@pytest.mark.medium
def test_diffusers_loads_the_exported_lora_and_computes_what_we_compute(tmp_path):
    _needs_diffusers()
    results = run_in_processes(_diffusers_lora_parity, 1, str(tmp_path))[0]
    for name, r in results.items():
        assert r["base_err"] <= 1e-4, (name, r["base_err"])
        assert r["merged_vs_hooks"] <= 1e-5
        assert r["effect"] > 1e-2, f"{name}: the LoRA changes nothing in diffusers"
        assert r["lora_err"] <= 1e-4, f"{name}: diffusers + LoRA differs from our merged model by {r['lora_err']}"
        assert (r["r"], r["alpha"]) == (4, 8.0), "the scale alpha / rank = 2 must reach PEFT's LoraConfig"
        # 2 blocks x (q, k, v, out of both attentions + fc1, fc2) x (A, B), under the pipeline's prefix
        assert len(r["keys"]) == 2 * 10 * 2
        assert "transformer.transformer_blocks.1.attn2.to_out.0.lora_B.weight" in r["keys"]
        assert "transformer.transformer_blocks.0.ff.net.0.proj.lora_A.weight" in r["keys"]
        assert "transformer.transformer_blocks.0.ff.net.2.lora_B.weight" in r["keys"]


# ---------------------------------------------------------------------------------------------------
# round trip and refusals


def _round_trip_and_refusals(tmp: str) -> dict:
    from safetensors.torch import load_file, save_file

    from cosmos_nemo import parallel
    from cosmos_nemo.models.dit.config import dit_config
    from cosmos_nemo.models.dit.model import build_dit_model
    from cosmos_nemo.peft.export import diffusers_lora_state, load_diffusers_lora, save_diffusers_lora
    from cosmos_nemo.peft.lora import LoRAConfig, LoRAError, apply_lora

    parallel.setup(seed=3)
    out: dict = {}
    model, _ = _lora_model()
    written = _adapters(model)
    save_diffusers_lora(model, f"{tmp}/fp32.safetensors")
    save_diffusers_lora(model, f"{tmp}/baked.safetensors", bake_scale=True)
    save_diffusers_lora(model, f"{tmp}/bf16.safetensors", dtype=torch.bfloat16)
    save_diffusers_lora(model, tmp + "/folder")  # a folder: diffusers' default file name inside
    out["folder_file"] = sorted(p.name for p in __import__("pathlib").Path(tmp, "folder").iterdir())
    try:
        save_diffusers_lora(model, f"{tmp}/fp32.safetensors")
        out["overwrite"] = "no error"
    except FileExistsError as err:
        out["overwrite"] = str(err)

    def fresh(**overrides):  # a LoRA model whose adapters are not the file's
        m = build_dit_model(dit_config(TINY, **overrides))
        apply_lora(m, LoRAConfig(targets=SIX, rank=4, alpha=8), seed=99)
        return m

    def refusal(model_, path):
        before = _adapters(model_)
        try:
            load_diffusers_lora(model_, path)
            msg = "no error"
        except LoRAError as err:
            msg = str(err)
        after = _adapters(model_)
        untouched = all(torch.equal(before[k], after[k]) for k in before)
        return msg, untouched

    m = fresh()
    out["report"] = load_diffusers_lora(m, f"{tmp}/fp32.safetensors")
    loaded = _adapters(m)
    out["exact"] = loaded.keys() == written.keys() and all(torch.equal(loaded[k], written[k]) for k in written)
    m = fresh()
    out["baked_report"] = load_diffusers_lora(m, f"{tmp}/baked.safetensors")
    baked = _adapters(m)
    out["baked_err"] = max((baked[k] - written[k]).abs().max().item() for k in written)
    m = fresh()
    load_diffusers_lora(m, f"{tmp}/bf16.safetensors")
    out["bf16_exact"] = all(torch.equal(_adapters(m)[k], written[k].bfloat16().float()) for k in written)
    out["state_equal_file"] = all(torch.equal(v, load_file(f"{tmp}/fp32.safetensors")[k])
                                  for k, v in diffusers_lora_state(model).items())

    # a 3-block model's adapter into the 2-block model (predict1#132's 28 vs 27)
    three, _ = _lora_model(num_layers=3)
    save_diffusers_lora(three, f"{tmp}/three.safetensors")
    out["three_into_two"] = refusal(fresh(), f"{tmp}/three.safetensors")
    out["two_into_three"] = refusal(fresh(num_layers=3), f"{tmp}/fp32.safetensors")
    # a file missing one adapter (block 1's cross-attention k)
    state = load_file(f"{tmp}/fp32.safetensors")
    save_file({k: v for k, v in state.items() if ".1.attn2.to_k." not in k}, f"{tmp}/missing.safetensors")
    out["missing"] = refusal(fresh(), f"{tmp}/missing.safetensors")
    # other targets: a q/v-only adapter into the six-target model
    qv, _ = _lora_model(targets=["q_proj", "v_proj"])
    save_diffusers_lora(qv, f"{tmp}/qv.safetensors")
    out["other_targets"] = refusal(fresh(), f"{tmp}/qv.safetensors")
    # another rank
    r8, _ = _lora_model(rank=8, alpha=8)
    save_diffusers_lora(r8, f"{tmp}/r8.safetensors")
    out["other_rank"] = refusal(fresh(), f"{tmp}/r8.safetensors")
    # a plain model
    try:
        load_diffusers_lora(build_dit_model(dit_config(TINY)), f"{tmp}/fp32.safetensors")
        out["plain"] = "no error"
    except LoRAError as err:
        out["plain"] = str(err)
    parallel.teardown()
    return out


@pytest.mark.medium
def test_round_trip_and_mismatches_are_refused(tmp_path):
    out = run_in_processes(_round_trip_and_refusals, 1, str(tmp_path))[0]
    assert out["exact"], "export -> load_diffusers_lora must give the same adapters bit for bit"
    assert out["report"]["rescaled"] is False and out["report"]["file_scale"] == 2.0
    assert out["baked_report"]["rescaled"] and out["baked_report"]["file_scale"] == 1.0
    assert out["baked_err"] <= 1e-7
    assert out["bf16_exact"] and out["state_equal_file"]
    assert out["folder_file"] == ["pytorch_lora_weights.safetensors"]
    assert "exists" in out["overwrite"]
    for case in ("three_into_two", "two_into_three", "missing", "other_targets", "other_rank"):
        msg, untouched = out[case]
        assert "does not fit" in msg and "none of it is applied" in msg, (case, msg)
        assert untouched, f"{case}: adapters changed although the file was refused"
    assert "blocks 0-2 (3 blocks)" in out["three_into_two"][0] and "blocks 0-1 (2 blocks)" in out["three_into_two"][0]
    assert "transformer_blocks.2." in out["three_into_two"][0]
    assert "not in the file" in out["missing"][0] and "transformer_blocks.1.attn2.to_k" in out["missing"][0]
    assert "attn1.to_k" in out["other_targets"][0] and "not in the file" in out["other_targets"][0]
    assert "other shapes" in out["other_rank"][0]
    assert "no LoRA adapters" in out["plain"]


# ---------------------------------------------------------------------------------------------------
# tensor parallelism


def _tp_export(tp: int, tmp: str) -> dict:
    from cosmos_nemo import parallel
    from cosmos_nemo.peft.export import diffusers_lora_state, load_diffusers_lora, save_diffusers_lora

    parallel.setup(tensor_parallel=tp, seed=3)
    model, _ = _lora_model()
    state = diffusers_lora_state(model)
    save_diffusers_lora(model, f"{tmp}/tp{tp}.safetensors")
    # read the TP=1 file into this layout, and gather it again
    fresh, _ = _lora_model(seed=11)
    load_diffusers_lora(fresh, f"{tmp}/tp1.safetensors")
    again = diffusers_lora_state(fresh)
    parallel.teardown()
    return {"state": state, "again": again}


@pytest.mark.medium
@pytest.mark.distributed
def test_tp2_export_equals_tp1(tmp_path):
    from safetensors.torch import load_file

    one = run_in_processes(_tp_export, 1, 1, str(tmp_path))[0]
    two = run_in_processes(_tp_export, 2, 2, str(tmp_path))
    assert len(one["state"]) == 40
    for r in two:
        assert r["state"].keys() == one["state"].keys()
        for k, v in one["state"].items():
            assert torch.equal(T(r["state"][k]), T(v)), k
            assert torch.equal(T(r["again"][k]), T(v)), f"{k}: TP=1 file read at TP=2 and gathered differs"
    f1, f2 = load_file(str(tmp_path / "tp1.safetensors")), load_file(str(tmp_path / "tp2.safetensors"))
    assert f1.keys() == f2.keys() and all(torch.equal(f1[k], f2[k]) for k in f1)


# ---------------------------------------------------------------------------------------------------
# the commands, through a tiny LoRA training run


def _train_runs(root: str) -> dict:
    from test_peft_lora import _train

    from cosmos_nemo.peft.lora import LoRAConfig

    base = _train(root, "base", 3)
    lora = _train(root, "lora", 3, base["run_dir"], LoRAConfig(rank=4, alpha=8), 1e-2)
    return {"base": base["run_dir"], "lora": lora["run_dir"], "checkpoint": lora["checkpoint"]}


def _run_adapters(run_dir: str, weights: str) -> dict:
    """The run's adapter as diffusers keys, read the trainer's way (dist_ckpt.load_model into a LoRA model)."""
    from pathlib import Path

    from cosmos_nemo import parallel
    from cosmos_nemo.checkpoint import dist as dist_ckpt
    from cosmos_nemo.checkpoint import run as run_folder
    from cosmos_nemo.peft.export import diffusers_lora_state
    from cosmos_nemo.peft.lora import LoRAConfig, apply_lora

    parallel.setup()
    family, cfg = run_folder.read_model_config(run_dir)
    folder = run_folder.latest_checkpoint(Path(run_dir) / "checkpoints") / weights
    info = dist_ckpt.read_lora_info(folder)
    model = family.build_model(cfg, True, True, torch.float32)
    apply_lora(model, LoRAConfig(**info["config"]))
    model.lora_info = info
    dist_ckpt.load_model([model], folder)
    state = diffusers_lora_state(model)
    parallel.teardown()
    return state


_COSMOS2 = {"attn1.to_q": "self_attn.q_proj", "attn1.to_k": "self_attn.k_proj", "attn1.to_v": "self_attn.v_proj",
            "attn1.to_out.0": "self_attn.output_proj", "attn2.to_q": "cross_attn.q_proj",
            "attn2.to_k": "cross_attn.k_proj", "attn2.to_v": "cross_attn.v_proj",
            "attn2.to_out.0": "cross_attn.output_proj", "ff.net.0.proj": "mlp.layer1", "ff.net.2": "mlp.layer2"}


@pytest.mark.slow
def test_lora_export_and_merge_commands(tmp_path, capsys):
    import re

    from safetensors import safe_open
    from safetensors.torch import load_file

    from cosmos_nemo.cli import main
    from test_dit_training import write_dataset

    write_dataset(tmp_path / "data", n=8)
    runs = run_in_processes(_train_runs, 1, str(tmp_path))[0]
    lora_run, base_run = runs["lora"], runs["base"]

    # lora-export: the run's adapter, as the trainer reads it, under diffusers keys, with alpha in the metadata
    out = tmp_path / "adapter.safetensors"
    assert main(["convert", "lora-export", lora_run, str(out)]) == 0
    exported = load_file(str(out))
    expected = run_in_processes(_run_adapters, 1, lora_run, "model")[0]
    assert exported.keys() == expected.keys() and len(exported) == 40
    assert all(torch.equal(exported[k], T(v)) for k, v in expected.items())
    with safe_open(str(out), framework="pt") as f:
        meta = __import__("json").loads(f.metadata()["lora_adapter_metadata"])
    assert meta["transformer.r"] == 4 and meta["transformer.lora_alpha"] == 8.0
    # the EMA adapter, an iter_* folder, bf16
    ema = tmp_path / "ema.safetensors"
    assert main(["convert", "lora-export", runs["checkpoint"], str(ema), "--ema", "--dtype", "bf16"]) == 0
    ema_state = load_file(str(ema))
    assert all(v.dtype == torch.bfloat16 for v in ema_state.values())
    assert not all(torch.equal(ema_state[k].float(), exported[k].bfloat16().float()) for k in exported)
    ema_dir = tmp_path / "ema_dir.safetensors"  # the ema/ folder named directly is the EMA adapter too
    assert main(["convert", "lora-export", runs["checkpoint"] + "/ema", str(ema_dir), "--dtype", "bf16"]) == 0
    assert all(torch.equal(v, ema_state[k]) for k, v in load_file(str(ema_dir)).items())
    assert main(["convert", "lora-export", lora_run, str(out)]) == 2  # exists
    assert "exists" in capsys.readouterr().out

    # lora-merge: base + (alpha / rank) B A in the Cosmos layout, checked against the base's own export
    merged, base = tmp_path / "merged.safetensors", tmp_path / "base.safetensors"
    assert main(["convert", "lora-merge", lora_run, str(merged)]) == 0
    assert main(["convert", "dit-export", "--checkpoint", base_run, "--model", TINY, "--output", str(base)]) == 0
    merged_state, base_state = load_file(str(merged)), load_file(str(base))
    assert merged_state.keys() == base_state.keys()
    changed = set()
    for key, value in exported.items():
        block, module, which = re.match(r"transformer\.transformer_blocks\.(\d+)\.(.+)\.lora_([AB])\.weight",
                                        key).groups()
        if which == "B":
            continue
        name = f"net.blocks.{block}.{_COSMOS2[module]}.weight"
        delta = 2.0 * exported[key.replace("lora_A", "lora_B")] @ value
        torch.testing.assert_close(merged_state[name], base_state[name] + delta, atol=1e-6, rtol=1e-5)
        changed.add(name)
    assert all(torch.equal(merged_state[k], base_state[k]) for k in base_state if k not in changed)
    # dit-export reads a LoRA run the same way (lora-merge is dit-export with lora.json's config)
    again = tmp_path / "again.safetensors"
    assert main(["convert", "dit-export", "--checkpoint", lora_run, "--model", TINY, "--output", str(again)]) == 0
    assert all(torch.equal(v, merged_state[k]) for k, v in load_file(str(again)).items())
    folder = tmp_path / "merged_diffusers"
    assert main(["convert", "lora-merge", lora_run, str(folder), "--layout", "diffusers", "--ema"]) == 0
    assert (folder / "config.json").is_file() and (folder / "diffusion_pytorch_model.safetensors").is_file()

    # a run without LoRA is an error that says what to use instead
    capsys.readouterr()
    assert main(["convert", "lora-export", base_run, str(tmp_path / "x.safetensors")]) == 2
    assert "not a LoRA run" in capsys.readouterr().out
    assert main(["convert", "lora-merge", base_run, str(tmp_path / "x.pt")]) == 2
    assert "dit-export" in capsys.readouterr().out


def test_lora_commands_explain_every_flag(capsys):
    from cosmos_nemo.cli import main

    for command, flags in (("lora-export", ["--ema", "--dtype", "--bake-scale", "--overwrite", "RUN_OR_ITER_FOLDER"]),
                           ("lora-merge", ["--layout", "--ema", "--dtype", "--no-prefix", "--overwrite"])):
        with pytest.raises(SystemExit) as exit_:
            main(["convert", command, "--help"])
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        for flag in flags:
            assert flag in text, (command, flag)
    assert main(["convert", "lora-export", "/nonexistent/run", "/tmp/x.safetensors"]) == 2
    assert "does not exist" in capsys.readouterr().out
