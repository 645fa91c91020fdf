"""`cosmos-nemo generate diffusion` at tiny size on a CPU: a random tiny Predict2.5 DiT written as a released file,
a random tiny AutoencoderKLWan, a random tiny T5 of the DiT's text width. T2W / I2W / V2W write mp4s of the
expected frame count and size, the conditional frames of the output are the input's VAE round trip, a seed
reproduces the bytes, and bad specs are refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cosmos_nemo.cli import main as cli_main
from cosmos_nemo.io import synthetic as syn
from cosmos_nemo.io.video import read_frames, write_mp4

H, W = 32, 48  # latent 4 x 6 at 8x spatial compression, 2 x 3 tokens
FRAMES = 9  # 3 latent frames at 4x temporal compression
TEXT_WIDTH = 512  # tiny_predict25's crossattn_proj_in


def write_tiny_predict25_assets(root: Path) -> dict:
    """A random tiny Predict2.5 DiT as a released file, and a tiny random Wan2.1 VAE folder, under `root`."""
    from safetensors.torch import save_file

    from cosmos_nemo import parallel
    from cosmos_nemo.data_prep.vae import import_autoencoder_kl_wan
    from cosmos_nemo.models.dit import convert
    from cosmos_nemo.models.dit.config import dit_config
    from cosmos_nemo.models.dit.model import build_dit_model

    torch.manual_seed(0)
    parallel.setup()
    try:
        cfg = dit_config("tiny_predict25")
        model = build_dit_model(cfg)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.05)
        state = convert.with_cosmos_prefix(convert.export_released(model, cfg))
    finally:
        parallel.teardown()
    save_file({k: v.contiguous() for k, v in state.items()}, str(root / "dit.safetensors"))
    torch.manual_seed(0)
    import_autoencoder_kl_wan()(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                                temperal_downsample=[False, True, True]).save_pretrained(root / "vae")
    return {"dit": root / "dit.safetensors", "vae": root / "vae"}


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    from cosmos_nemo.compat import hide_unusable_torchvision

    root = tmp_path_factory.mktemp("gen_diffusion")
    write_tiny_predict25_assets(root)
    hide_unusable_torchvision()
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    torch.manual_seed(0)
    config = T5Config(vocab_size=384, d_model=TEXT_WIDTH, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    T5EncoderModel(config).eval().save_pretrained(root / "t5")
    ByT5Tokenizer().save_pretrained(root / "t5")

    write_mp4(root / "clip.mp4", syn.pattern_frames(12, 40, 56, seed=1), fps=10)
    from PIL import Image

    Image.fromarray(syn.pattern_frames(1, 36, 60, seed=2)[0]).save(root / "still.png")
    return {"root": root, "dit": root / "dit.safetensors", "vae": root / "vae", "t5": root / "t5",
            "clip": root / "clip.mp4", "image": root / "still.png"}


def _args(assets: dict, out: Path, *extra: str) -> list[str]:
    return ["generate", "diffusion", "-o", str(out), "--checkpoint-path", str(assets["dit"]), "--model", "tiny_predict25",
            "--vae", "wan2.1", "--vae-path", str(assets["vae"]), "--text-encoder", str(assets["t5"]),
            "--prompt-length", "16", "--height", str(H), "--width", str(W), "--num_output_frames", str(FRAMES),
            "--num_steps", "2", "--fps", "8", *extra]


def _specs(path: Path, specs) -> Path:
    path.write_text(json.dumps(specs))
    return path


def _vae_round_trip(assets: dict, frames: np.ndarray) -> np.ndarray:
    from cosmos_nemo.data_prep.vae import decode_latents, load_latent_encoder

    vae = load_latent_encoder("wan2.1", str(assets["vae"]))
    return decode_latents(vae, vae.encode(frames[None]))[0]


def _input_frames(path: Path, n: int) -> np.ndarray:
    from cosmos_nemo.inference.diffusion_cli import conditional_frames, read_input

    return conditional_frames(read_input(path), n, H, W)


def test_t2w_i2w_v2w_write_videos_whose_conditional_frames_are_the_inputs_round_trip(assets, tmp_path):
    specs = _specs(tmp_path / "specs.json", [
        {"name": "t2w", "prompt": "a red ball rolls"},  # mode from the input: none -> text2world
        {"name": "i2w", "prompt": "a red ball rolls", "input_path": str(assets["image"])},  # image -> image2world
        {"name": "v2w", "prompt_path": "prompt.txt", "input_path": "clip.mp4"},  # paths relative to the JSON
        {"inference_type": "image2world", "name": "i2w_b", "prompt": "two balls", "input_path": str(assets["image"]),
         "seed": 3},
    ])
    (tmp_path / "prompt.txt").write_text("a ball moves left\n")
    (tmp_path / "clip.mp4").symlink_to(assets["clip"])
    out = tmp_path / "out"
    assert cli_main(_args(assets, out, "-i", str(specs), "--lossless")) == 0
    names = {"t2w", "i2w", "v2w", "i2w_b"}
    assert {p.name for p in out.iterdir()} == {f"{n}.{ext}" for n in names for ext in ("mp4", "png")}
    videos = {n: read_frames(out / f"{n}.mp4") for n in names}
    for n, v in videos.items():
        assert v.shape == (FRAMES, H, W, 3), n
    # the conditional frames: 1 latent (1 frame) for an image, 2 latents (5 frames) for a video
    for name, path, n_px in (("i2w", assets["image"], 1), ("v2w", assets["clip"], 5)):
        expected = _vae_round_trip(assets, _input_frames(path, n_px))
        diff = np.abs(videos[name][:n_px].astype(np.int16) - expected.astype(np.int16))
        assert diff.max() <= 3 and diff.mean() < 1.0, (name, diff.max(), diff.mean())  # only the RGB/YUV rounding
    from PIL import Image

    sheet = Image.open(out / "v2w.png")
    assert sheet.size[0] > W and sheet.size[1] > 2 * H  # two labelled rows: input / generated


def test_a_seed_reproduces_the_video_bytes_and_another_seed_does_not(assets, tmp_path):
    specs = _specs(tmp_path / "s.json", {"name": "clip", "prompt": "a ball", "input_path": str(assets["clip"])})
    runs = {}
    for tag, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        assert cli_main(_args(assets, tmp_path / tag, "-i", str(specs), "--seed", seed, "--num_steps", "1")) == 0
        runs[tag] = (tmp_path / tag / "clip.mp4").read_bytes()
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


def test_a_negative_prompt_changes_the_unconditional_branch(assets, tmp_path):
    runs = {}
    for tag, extra in (("none", {}), ("neg", {"negative_prompt": "blurry, static"})):
        specs = _specs(tmp_path / f"{tag}.json", {"name": "clip", "prompt": "a ball", **extra})
        assert cli_main(_args(assets, tmp_path / tag, "-i", str(specs), "--seed", "5", "--num_steps", "1")) == 0
        runs[tag] = (tmp_path / tag / "clip.mp4").read_bytes()
    assert runs["none"] != runs["neg"]


def test_predict1_flags_describe_one_spec(assets, tmp_path):
    out = tmp_path / "p1"
    rc = cli_main(_args(assets, tmp_path / "unused", "--prompt", "a ball", "--input_image_or_video_path", str(assets["clip"]),
                        "--num_input_frames", "1", "--video_save_name", "mine.mp4", "--video_save_folder", str(out),
                        "-o", str(out), "--num_steps", "1", "--guidance", "0"))
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["mine.mp4", "mine.png"]
    assert read_frames(out / "mine.mp4").shape == (FRAMES, H, W, 3)
    assert not (tmp_path / "unused").exists()


def test_predict1_checkpoint_dir_spelling(assets, tmp_path):
    """--checkpoint_dir ROOT --diffusion_transformer_dir NAME (model.safetensors inside) --tokenizer_dir NAME."""
    import shutil

    root = tmp_path / "checkpoints"
    (root / "tiny_predict25").mkdir(parents=True)
    shutil.copy(assets["dit"], root / "tiny_predict25" / "model.safetensors")
    shutil.copytree(assets["vae"], root / "Wan-VAE")
    args = ["generate", "diffusion", "--checkpoint_dir", str(root), "--diffusion_transformer_dir", "tiny_predict25",
            "--vae", "wan2.1", "--tokenizer_dir", "Wan-VAE", "--text-encoder", str(assets["t5"]), "--prompt-length", "16",
            "--height", str(H), "--width", str(W), "--num_video_frames", "5", "--num_steps", "1",
            "--prompt", "a ball", "--video_save_folder", str(tmp_path / "out")]
    assert cli_main(args) == 0
    assert read_frames(tmp_path / "out" / "output.mp4").shape == (5, H, W, 3)


@pytest.mark.parametrize("spec, extra, message", [
    ({"name": "x", "prompt": "p", "inference_type": "image2video", "input_path": "IMAGE"}, (), "unknown inference_type"),
    ({"name": "x", "prompt": "p", "input_path": "missing.mp4"}, (), "does not exist"),
    ({"name": "x", "prompt": "p", "inference_type": "video2world"}, (), "needs an \"input_path\""),
    ({"name": "x"}, (), "no prompt"),
    ({"name": "x", "prompt": "p"}, ("--num_output_frames", "8"), "not 1 \\+ k\\*4"),
    ({"name": "x", "prompt": "p"}, ("--height", "20"), "not a multiple of 16"),
    ({"name": "x", "prompt": "p", "input_path": "IMAGE"}, ("--model", "tiny_predict1_t2w"), "Text2World"),
    ({"name": "x", "prompt": "p"}, ("--model", "tiny_predict1_v2w"), "1024-d text tokens"),
    ({"name": "x", "prompt": "p"}, ("--checkpoint-path", "BROKEN"), "cannot read|not a"),
    ({"name": "x", "prompt": "p"}, ("--checkpoint-path", "IMAGE", "--model", "no_such_dit"), "unknown DiT model config"),
    ([{"name": "x", "prompt": "p"}, {"name": "x", "prompt": "q"}], (), "names must be unique"),
    ({"name": "x", "prompt": "p", "input_path": "BROKEN"}, (), "not a readable video"),
    ({"name": "../x", "prompt": "p"}, (), "plain file name"),
    ({"name": "x", "prompt": "p", "enable_autoregressive": True}, (), "not supported"),
])
def test_bad_specs_are_refused_before_anything_is_written(assets, tmp_path, capsys, spec, extra, message):
    import re

    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    text = json.dumps(spec).replace("IMAGE", str(assets["image"])).replace("BROKEN", str(tmp_path / "broken.mp4"))
    specs = tmp_path / "bad.json"
    specs.write_text(text)
    out = tmp_path / "out"
    extra = [str(assets["image"]) if x == "IMAGE" else str(tmp_path / "broken.mp4") if x == "BROKEN" else x for x in extra]
    assert cli_main(_args(assets, out, "-i", str(specs), *extra)) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()


def test_a_failure_mid_run_leaves_nothing(assets, tmp_path, monkeypatch):
    from cosmos_nemo.inference import diffusion_cli

    calls = []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(*a, **k)

    import cosmos_nemo.inference.diffusion as diffusion

    real = diffusion.generate_latents
    monkeypatch.setattr(diffusion, "generate_latents", failing)
    specs = _specs(tmp_path / "s.json", [{"name": "a", "prompt": "p", "seed": 1}, {"name": "b", "prompt": "p", "seed": 2}])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(RuntimeError, match="boom"):
        diffusion_cli.run(_parse(_args(assets, out, "-i", str(specs), "--num_steps", "1")))
    assert list(out.iterdir()) == []


def test_specs_of_one_shape_and_seed_run_as_one_batch(assets, tmp_path, monkeypatch):
    import cosmos_nemo.inference.diffusion as diffusion

    shapes = []
    real = diffusion.generate_latents

    def recording(model, context, shape, *a, **k):
        shapes.append(tuple(shape))
        return real(model, context, shape, *a, **k)

    monkeypatch.setattr(diffusion, "generate_latents", recording)
    specs = _specs(tmp_path / "s.json", [{"name": n, "prompt": f"prompt {n}", "input_path": str(assets["image"])}
                                         for n in ("a", "b", "c")] + [{"name": "d", "prompt": "p"}])
    assert cli_main(_args(assets, tmp_path / "out", "-i", str(specs), "--num_steps", "1", "--batch-size", "2")) == 0
    assert sorted(shapes) == [(1, 16, 3, 4, 6)] * 2 + [(2, 16, 3, 4, 6)]  # a+b, then c; d (text2world) alone
    videos = [read_frames(tmp_path / "out" / f"{n}.mp4") for n in "abcd"]
    assert all(v.shape == (FRAMES, H, W, 3) for v in videos)
    assert not np.array_equal(videos[0][1:], videos[1][1:])  # other prompts and noise: other videos


def _parse(argv):
    from cosmos_nemo.cli import build_parser

    return build_parser().parse_args(argv)


def test_help_explains_every_flag(capsys):
    import argparse

    from cosmos_nemo.cli import build_parser

    generate = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["generate"]
    diffusion = next(a for a in generate._actions if isinstance(a, argparse._SubParsersAction)).choices["diffusion"]
    for action in diffusion._actions:
        assert action.help and len(action.help) > 10, action.option_strings
    with pytest.raises(SystemExit) as e:
        cli_main(["generate", "diffusion", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--checkpoint-path", "--num_input_frames", "--diffusion_transformer_dir", "--karras", "text2world"):
        assert flag in text


def test_ar_generate_still_requires_its_flags(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["generate", "--ar_model_dir", "x"])
    assert e.value.code == 2
    assert "required: --input_image_or_video_path, --encoder_path" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------
# Other checkpoint kinds, the EDM (Predict1) path and the Cosmos CV VAE


def _export(name: str, layout: str | None = None, seed: int = 0) -> tuple:
    from cosmos_nemo import parallel
    from cosmos_nemo.models.dit import convert
    from cosmos_nemo.models.dit.config import dit_config
    from cosmos_nemo.models.dit.model import build_dit_model

    torch.manual_seed(seed)
    parallel.setup()
    try:
        cfg = dit_config(name)
        model = build_dit_model(cfg)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.05)
        return cfg, {k: v.clone().contiguous() for k, v in convert.export_released(model, cfg, layout).items()}
    finally:
        parallel.teardown()


def test_a_diffusers_folder_needs_no_model_name_and_gives_the_same_video(assets, tmp_path):
    from cosmos_nemo.models.dit import convert
    from cosmos_nemo.models.dit.config import dit_config

    folder = tmp_path / "diffusers_dit"
    convert.save_diffusers(_diffusers_state(assets), dit_config("tiny_predict25"), folder)
    specs = _specs(tmp_path / "s.json", {"name": "v", "prompt": "a ball", "input_path": str(assets["image"])})
    args = _args(assets, tmp_path / "a", "-i", str(specs), "--num_steps", "1")
    assert cli_main(args) == 0
    i = args.index("--checkpoint-path")
    args_b = args[:i] + ["--checkpoint-path", str(folder)] + args[i + 4:]  # no --model
    args_b[args_b.index("-o") + 1] = str(tmp_path / "b")
    assert "--model" not in args_b
    assert cli_main(args_b) == 0
    assert (tmp_path / "a" / "v.mp4").read_bytes() == (tmp_path / "b" / "v.mp4").read_bytes()


def _diffusers_state(assets) -> dict:
    """The fixture's released weights in the diffusers layout (load the file, export as diffusers)."""
    from cosmos_nemo import parallel
    from cosmos_nemo.models.dit import convert
    from cosmos_nemo.models.dit.config import dit_config
    from cosmos_nemo.models.dit.model import build_dit_model

    parallel.setup()
    try:
        cfg = dit_config("tiny_predict25")
        model = build_dit_model(cfg)
        convert.load_released(model, cfg, assets["dit"])
        return {k: v.clone().contiguous() for k, v in convert.export_released(model, cfg, "diffusers").items()}
    finally:
        parallel.teardown()


def test_predict1_edm_heun_image2world_with_a_1024_wide_t5(assets, tmp_path):
    from safetensors.torch import save_file

    from cosmos_nemo.compat import hide_unusable_torchvision
    from cosmos_nemo.models.dit import convert

    cfg, state = _export("tiny_predict1_v2w")
    save_file(convert.with_cosmos_prefix(state), str(tmp_path / "p1.safetensors"))
    hide_unusable_torchvision()
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    torch.manual_seed(0)
    T5EncoderModel(T5Config(vocab_size=384, d_model=1024, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)).save_pretrained(tmp_path / "t5")
    ByT5Tokenizer().save_pretrained(tmp_path / "t5")
    args = _args(assets, tmp_path / "out", "--prompt", "a ball", "--input_image_or_video_path", str(assets["image"]),
                 "--solver", "heun", "--lossless")
    args[args.index("--checkpoint-path") + 1] = str(tmp_path / "p1.safetensors")
    args[args.index("--model") + 1] = "tiny_predict1_v2w"
    args[args.index("--text-encoder") + 1] = str(tmp_path / "t5")
    assert cli_main(args) == 0
    video = read_frames(tmp_path / "out" / "output.mp4")
    assert video.shape == (FRAMES, H, W, 3)
    expected = _vae_round_trip(assets, _input_frames(assets["image"], 1))
    assert np.abs(video[:1].astype(np.int16) - expected.astype(np.int16)).max() <= 3


def test_cosmos_cv_vae_decodes_its_own_normalisation_and_drives_generation(assets, tmp_path):
    from cosmos_nemo.data_prep.vae import decode_latents, frames_to_vae_input, load_latent_encoder
    from cosmos_nemo.tokenizers import load_video_tokenizer

    folder = tmp_path / "tiny_cv"
    load_video_tokenizer("tiny-cv").save(folder)  # 4x8x8, 16 channels
    g = torch.Generator().manual_seed(0)
    torch.save((torch.randn(16 * 3, generator=g), torch.rand(16 * 3, generator=g) + 0.5), folder / "mean_std.pt")
    vae = load_latent_encoder("cosmos-cv", str(folder))
    clip = syn.pattern_frames(FRAMES, H, W, seed=4)
    direct = vae.tok.decode(vae.tok.encode(frames_to_vae_input(clip[None])))
    direct = ((direct.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()
    back = decode_latents(vae, vae.encode(clip[None])).astype(np.int16)
    assert np.abs(back - direct).max() <= 1  # (z - mean) / std * s undone exactly up to float rounding
    out = tmp_path / "out"
    args = _args(assets, out, "--prompt", "a ball", "--input_image_or_video_path", str(assets["clip"]), "--num_steps", "1")
    args[args.index("--vae") + 1] = "cosmos-cv8x8x8"
    args[args.index("--vae-path") + 1] = str(folder)
    assert cli_main(args) == 0
    assert read_frames(out / "output.mp4").shape == (FRAMES, H, W, 3)
    # 13 frames need 4 latent frames, and mean_std.pt has statistics for 3: refused before anything is written
    assert cli_main(args[:-2] + ["--num_output_frames", "13", "-o", str(tmp_path / "none")]) == 2
    assert not (tmp_path / "none").exists()


@pytest.mark.medium
def test_a_training_run_folder_generates_what_its_released_weights_generate(assets, tmp_path):
    """A run fine-tuned from the fixture's file with lr 0 holds exactly those weights: the video from the run
    folder (no --model: config.yaml defines it) is the video from the file."""
    from cosmos_nemo.parallel.launch import run_in_processes
    from test_dit_training import _train, write_dataset

    write_dataset(tmp_path / "data", n=4, width=TEXT_WIDTH)
    result = run_in_processes(_train, 1, str(tmp_path), "gen", "tiny_predict25", 1, str(assets["dit"]), None, 0.0)[0]
    specs = _specs(tmp_path / "s.json", {"name": "v", "prompt": "a ball", "input_path": str(assets["clip"])})
    args = _args(assets, tmp_path / "a", "-i", str(specs), "--num_steps", "1")
    assert cli_main(args) == 0
    i = args.index("--checkpoint-path")
    args_b = args[:i] + ["--checkpoint-path", result["run_dir"]] + args[i + 4:]
    args_b[args_b.index("-o") + 1] = str(tmp_path / "b")
    assert cli_main(args_b) == 0
    assert (tmp_path / "a" / "v.mp4").read_bytes() == (tmp_path / "b" / "v.mp4").read_bytes()
