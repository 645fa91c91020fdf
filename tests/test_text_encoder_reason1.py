"""The Predict2.5 text path: Cosmos-Reason1 FULL_CONCAT embeddings computed online (diffusion_models.md §2), on the
tiny random Qwen2.5-VL (`reason1-tiny`, 4 layers x 128 = 512-d, tiny_predict25's crossattn_proj_in).

Checked against a direct computation written here (the chat as text, the tokenizer, right padding with the pad
id, the model's hidden_states[1:], per-token normalisation, concatenation) and against diffusers'
`Cosmos2_5_PredictBasePipeline._get_prompt_embeds`; the padding positions hold the pad token's real states and do
not change the prompt's; `prepare text-embeddings --encoder reason1-tiny` (and a saved Qwen2.5-VL folder through
`--encoder reason1 --encoder-path`) feeds `prepare latents` and the tiny Predict2.5 model; `generate diffusion`
runs end to end with it; a missing checkpoint is an error naming the hub id."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from cosmos_nemo.cli import main as cli_main
from cosmos_nemo.data_prep import reason1

PROMPTS = ["a red ball bounces off the wall", "two blue balls, é ü 漢字", "a red ball bounces off the wall"]
LAYERS, HIDDEN = 4, 128
SYSTEM = "You are a helpful assistant who will provide prompts to an image generator."


@pytest.fixture(scope="module")
def encoder():
    return reason1.load_encoder("reason1-tiny")


def _direct(model, tokenizer, prompts, length=512):
    """FULL_CONCAT written out: chat text -> ids -> pad/truncate -> hidden_states[1:] -> normalise -> concat."""
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    rows = []
    for p in prompts:
        text = (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{p}<|im_end|>\n")
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        rows.append((ids + [pad] * length)[:length])
    with torch.no_grad():
        out = model(input_ids=torch.tensor(rows), output_hidden_states=True)  # the full model, logits and all
    assert len(out.hidden_states) == LAYERS + 1
    layers = []
    for h in out.hidden_states[1:]:
        h = h.double()
        mean = h.mean(-1, keepdim=True)
        std = ((h - mean) ** 2).sum(-1, keepdim=True).div(h.shape[-1] - 1).sqrt()  # unbiased, as torch.std
        layers.append((h - mean) / (std + 1e-8))
    return torch.cat(layers, -1).float(), rows


def test_full_concat_equals_a_direct_transformers_computation(encoder):
    long_prompt = "word " * 700  # more than 512 tokens: truncated to the first 512
    prompts = PROMPTS + [long_prompt]
    got = encoder.encode(prompts)
    assert got.embeddings.shape == (4, 512, LAYERS * HIDDEN) == (4, 512, 512) and got.embeddings.dtype == torch.float32
    ref, rows = _direct(encoder.model, encoder.tokenizer, prompts)
    torch.testing.assert_close(got.embeddings, ref, rtol=1e-5, atol=1e-5)
    # the template as the reference renders it (system turn, user turn, no generation prompt)
    text = encoder.tokenizer.apply_chat_template(reason1.conversation("hi"), tokenize=False, add_generation_prompt=False,
                                                 add_vision_id=False)
    assert text == f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
    ids, lengths = reason1.token_ids(encoder.tokenizer, prompts)
    assert ids.tolist() == rows
    # every 128-wide block is one layer normalised per token: mean 0, (unbiased) std 1
    blocks = got.embeddings.view(4, 512, LAYERS, HIDDEN)
    assert blocks.mean(-1).abs().max() < 1e-5 and (blocks.std(-1) - 1).abs().max() < 1e-5
    assert got.mask.tolist() == [[i < n for i in range(512)] for n in lengths.tolist()]
    assert lengths[3] == 512 and got.mask[3].all()


def test_diffusers_get_prompt_embeds_gives_the_same_rows(encoder):
    from cosmos_nemo.compat import torchvision_namespace

    torchvision_namespace()
    pipeline = pytest.importorskip("diffusers.pipelines.cosmos.pipeline_cosmos2_5_predict")
    fake = types.SimpleNamespace(tokenizer=encoder.tokenizer, text_encoder=encoder.model,
                                 _execution_device=torch.device("cpu"))
    with torch.no_grad():
        ref = pipeline.Cosmos2_5_PredictBasePipeline._get_prompt_embeds(fake, PROMPTS[:2], max_sequence_length=512)
    torch.testing.assert_close(encoder.encode(PROMPTS[:2]).embeddings, ref.float(), rtol=1e-5, atol=1e-5)


def test_padding_is_the_pad_tokens_states_and_leaves_the_prompt_alone(encoder):
    full = encoder.encode(PROMPTS[:2])
    short = reason1.Reason1TextEncoder(encoder.model, encoder.tokenizer, "short", max_length=140).encode(PROMPTS[:2])
    for i in range(2):
        n = int(full.mask[i].sum())
        assert 20 < n < 140
        # causal attention: the prompt's tokens see no padding, whatever its length
        torch.testing.assert_close(short.embeddings[i, :n], full.embeddings[i, :n], rtol=1e-5, atol=1e-5)
        pads = full.embeddings[i, n:]
        assert pads.abs().sum(-1).min() > 1  # real states, not zeros
        assert not torch.allclose(pads[0], pads[-1])  # each pad sees the prompt and the pads before it


def test_identical_prompts_give_identical_rows_in_any_batch(encoder):
    one = encoder.encode(PROMPTS)
    assert torch.equal(one.embeddings[0], one.embeddings[2]) and torch.equal(one.mask[0], one.mask[2])
    assert not torch.allclose(one.embeddings[0], one.embeddings[1])
    single = reason1.Reason1TextEncoder(encoder.model, encoder.tokenizer, "b1", batch_size=1).encode(PROMPTS[2:])
    torch.testing.assert_close(single.embeddings[0], one.embeddings[2], rtol=1e-5, atol=1e-5)
    again = reason1.build_tiny_model()  # same seed, same weights
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), encoder.model.state_dict().values()))


# ------------------------------------------------------------------------------------------------------
# prepare text-embeddings -> prepare latents -> the tiny Predict2.5 model


def _dataset(root: Path) -> Path:
    from cosmos_nemo.io import synthetic as syn
    from cosmos_nemo.io.video import write_mp4

    (root / "videos").mkdir(parents=True)
    (root / "metas").mkdir()
    for i, stem in enumerate(("a0", "b1", "c2")):
        write_mp4(root / "videos" / f"{stem}.mp4", syn.pattern_frames(5, 16, 32, seed=i), fps=10)
        (root / "metas" / f"{stem}.txt").write_text(PROMPTS[i] + "\n")
    return root


def test_prepare_text_embeddings_reason1_tiny_feeds_the_tiny_predict25_model(encoder, tmp_path):
    from cosmos_nemo import parallel
    from cosmos_nemo.data.dit_dataset import DiTDataConfig, build_dit_dataloaders
    from cosmos_nemo.data_prep.latents import prepare_latents
    from cosmos_nemo.data_prep.settings import LatentsConfig
    from cosmos_nemo.data_prep.text_embeddings import load_text_table
    from cosmos_nemo.data_prep.vae import import_autoencoder_kl_wan
    from cosmos_nemo.models.dit.config import dit_config
    from cosmos_nemo.models.dit.model import build_dit_model

    ds = _dataset(tmp_path / "ds")
    out = tmp_path / "text.safetensors"
    assert cli_main(["prepare", "text-embeddings", "--dataset_path", str(ds), "--encoder", "reason1-tiny", "--output",
                     str(out), "--text-dtype", "float32", "--device", "cpu"]) == 0
    table, sources = load_text_table(out)
    assert table.embeddings.shape == (2, 512, 512) and table.encoder == reason1.TINY_NAME
    assert sources == {"a0": 0, "b1": 1, "c2": 0}  # the repeated caption is stored once
    direct = encoder.encode(table.prompts)
    assert torch.equal(table.embeddings, direct.embeddings) and torch.equal(table.mask, direct.mask)

    # a Qwen2.5-VL checkpoint folder through --encoder reason1 --encoder-path: the same rows
    folder = tmp_path / "Cosmos-Reason1-tiny"
    encoder.model.save_pretrained(folder)
    encoder.tokenizer.save_pretrained(folder)
    out2 = tmp_path / "text2.safetensors"
    assert cli_main(["prepare", "text-embeddings", "--dataset_path", str(ds), "--encoder", "reason1", "--encoder-path",
                     str(folder), "--output", str(out2), "--text-dtype", "float32", "--device", "cpu",
                     "--dtype", "float32"]) == 0
    table2, _ = load_text_table(out2)
    assert table2.prompts == table.prompts and table2.encoder == folder.name
    torch.testing.assert_close(table2.embeddings, table.embeddings, rtol=1e-5, atol=1e-5)

    torch.manual_seed(0)
    vae = tmp_path / "vae"
    import_autoencoder_kl_wan()(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                                temperal_downsample=[False, True, True]).save_pretrained(vae)
    lat = tmp_path / "lat"
    prepare_latents(LatentsConfig(dataset_path=ds, output_dir=lat, num_frames=5, video_size=[16, 32], vae_path=str(vae),
                                  text_source=str(out), progress=False, decode_threads=1, device="cpu", dtype="float32"))
    cfg = dit_config("tiny_predict25")
    train, _, _ = build_dit_dataloaders(DiTDataConfig(paths=[str(lat)], split_string="1,0,0", micro_batch_size=1,
                                                      global_batch_size=1), cfg)
    batch = next(train)
    assert batch["context"].shape == (1, 512, cfg.crossattn_proj_in)
    parallel.setup()
    try:
        model = build_dit_model(cfg).eval()
        x = batch["latents"]
        with torch.no_grad():
            y = model(x, torch.full((1, x.shape[2]), 500.0), batch["context"], fps=10.0)
        assert y.shape == batch["latents"].shape and torch.isfinite(y).all()
    finally:
        parallel.teardown()


def test_reason1_without_a_checkpoint_is_an_error_naming_the_hub_id(tmp_path, capsys):
    ds = tmp_path / "ds"
    (ds / "metas").mkdir(parents=True)
    (ds / "metas" / "a.txt").write_text("a ball\n")
    base = ["prepare", "text-embeddings", "--dataset_path", str(ds), "--device", "cpu"]
    for extra in (["--encoder", "reason1"], ["--encoder", "reason1", "--encoder-path", str(tmp_path / "missing")],
                  ["--encoder", "reason1", "--encoder-path", str(ds)]):
        assert cli_main(base + extra) == 2
        err = capsys.readouterr().out
        assert "nvidia/Cosmos-Reason1-7B" in err, err
    assert cli_main(base + ["--encoder", "t5-11b", "--encoder-path", str(ds)]) == 2
    assert "--encoder reason1" in capsys.readouterr().out
    assert cli_main(base + ["--encoder", "reason1-tiny", "--write-pickles"]) == 2
    assert "Reason1" in capsys.readouterr().out
    assert not (ds / "text_embeddings.safetensors").exists()


# ------------------------------------------------------------------------------------------------------
# generate diffusion


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> dict:
    from test_generate_diffusion import write_tiny_predict25_assets

    return write_tiny_predict25_assets(tmp_path_factory.mktemp("reason1_gen"))


def _gen_args(released: dict, out: Path, *extra: str) -> list[str]:
    return ["generate", "diffusion", "-o", str(out), "--checkpoint-path", str(released["dit"]), "--model",
            "tiny_predict25", "--vae", "wan2.1", "--vae-path", str(released["vae"]), "--height", "16", "--width", "32",
            "--num_output_frames", "5", "--num_steps", "1", "--fps", "8", "--prompt", PROMPTS[0], *extra]


def test_generate_diffusion_encodes_the_prompt_with_reason1_online(released, tmp_path, monkeypatch):
    from cosmos_nemo.inference import diffusion as diffusion_mod
    from cosmos_nemo.io.video import read_frames

    seen = {}
    real = diffusion_mod.generate_latents

    def spy(model, context, shape, settings, **kw):
        seen["context"], seen["uncond"] = context.clone(), kw["uncond_context"].clone()
        return real(model, context, shape, settings, **kw)

    monkeypatch.setattr(diffusion_mod, "generate_latents", spy)
    out = tmp_path / "out"
    assert cli_main(_gen_args(released, out, "--text-encoder", "reason1-tiny")) == 0
    assert read_frames(out / "output.mp4").shape == (5, 16, 32, 3) and (out / "output.png").is_file()
    # generate runs the encoder on the DiT's device and dtype (bf16 on a GPU): the same computation here
    device, dtype = ("cuda", torch.bfloat16) if torch.cuda.is_available() else ("cpu", torch.float32)
    expected = reason1.load_encoder("reason1-tiny", device=device, dtype=dtype).encode(PROMPTS[:1]).embeddings[0]
    assert seen["context"].shape == (1, 512, 512)
    torch.testing.assert_close(seen["context"][0].float().cpu(), expected)
    assert not seen["uncond"].any()  # the reference's zero context for the unconditional branch


def test_generate_diffusion_predict25_needs_the_reason1_checkpoint(released, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli_main(_gen_args(released, out)) == 2  # Predict2.5 defaults to reason1, which needs its folder
    err = capsys.readouterr().err
    assert "nvidia/Cosmos-Reason1-7B" in err and "--text-encoder-path" in err
    assert cli_main(_gen_args(released, out, "--text-encoder-path", str(tmp_path / "nowhere"))) == 2
    assert "nvidia/Cosmos-Reason1-7B" in capsys.readouterr().err
    assert not out.exists()


def test_checkpoint_folders_accepts_a_diffusers_predict25_folder(tmp_path):
    root = tmp_path / "Cosmos-Predict2.5-2B-diffusers"
    (root / "text_encoder").mkdir(parents=True)
    (root / "tokenizer").mkdir()
    (root / "text_encoder" / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    assert reason1.checkpoint_folders(root) == (root / "text_encoder", root / "tokenizer")
    assert reason1.is_reason1(str(root)) and reason1.is_reason1("reason1-tiny") and not reason1.is_reason1("t5-11b")
    (tmp_path / "t5").mkdir()
    (tmp_path / "t5" / "config.json").write_text(json.dumps({"model_type": "t5"}))
    assert reason1.checkpoint_folders(tmp_path / "t5") is None
    assert np.isclose(reason1.NORM_EPS, 1e-8) and reason1.MAX_LENGTH == 512
