"""`train-tokenizer`: held-out PSNR rises well above the random-init tokenizer's; output loads; bad input is clear."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from cosmos_nemo.cli import main
from cosmos_nemo.io.video import write_mp4
from cosmos_nemo.tokenizers import load_video_tokenizer
from cosmos_nemo.tokenizers.train import psnr_uint8


def _moving_shapes(path, seed: int, frames: int = 17, size: int = 32) -> None:
    """A smoothly moving disc and square on a flat background (colours vary per video)."""
    rng = np.random.default_rng(seed)
    bg, c1, c2 = rng.integers(0, 256, size=(3, 3))
    yy, xx = np.mgrid[0:size, 0:size]
    video = np.empty((frames, size, size, 3), np.uint8)
    x0, y0, vx, vy = rng.uniform(8, size - 8, 2).tolist() + rng.uniform(-1.2, 1.2, 2).tolist()
    for t in range(frames):
        img = np.empty((size, size, 3), np.float32)
        img[:] = bg
        cx, cy = x0 + vx * t, y0 + vy * t
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < 36] = c1
        sx = int(4 + (t * 1.5) % (size - 12))
        img[4:12, sx : sx + 8] = c2
        video[t] = img.astype(np.uint8)
    write_mp4(path, video, fps=12)


def test_psnr_is_one_global_mse():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[0] = 10  # frame 0 off by 10, frame 1 exact: per-frame mean PSNR would be infinite
    mse = 100 / 2
    assert psnr_uint8(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(20 * math.log10(255 / math.sqrt(mse)))


def test_train_tokenizer_bad_input(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["train-tokenizer", "--data", str(tmp_path / "empty"), "--output", str(tmp_path / "o")]) == 1
    assert "no video files" in capsys.readouterr().out
    (tmp_path / "v").mkdir()
    _moving_shapes(tmp_path / "v" / "a.mp4", 0, frames=17)
    args = ["train-tokenizer", "--data", str(tmp_path / "v"), "--output", str(tmp_path / "o"), "--num-frames", "16"]
    assert main(args) == 1
    assert "frames=16 is not 1 + k·4" in capsys.readouterr().out
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_train_tokenizer_raises_heldout_psnr(tmp_path, capsys):
    data = tmp_path / "videos"
    for i in range(8):
        _moving_shapes(data / f"clip_{i}.mp4", seed=i)
    out = tmp_path / "tok"
    args = ["train-tokenizer", "--data", str(data), "--output", str(out), "--height", "32", "--width", "32",
            "--steps", "300", "--batch-size", "4", "--no-progress", "--threads", "2", "--augment"]  # fmt: skip
    assert main(args) == 0
    report = json.loads((out / "training_report.json").read_text())["result"]
    assert report["heldout_clips"] == 2 and report["train_clips"] == 6  # whole videos held out
    assert report["psnr_after"] > report["psnr_before"] + 5.0, report

    # The saved folder loads through the public API and reproduces the reported held-out PSNR.
    tok = load_video_tokenizer(out)
    assert tok.name == "tiny" and tok.vocab_size == 64000
    from cosmos_nemo.tokenizers.train import heldout_psnr, load_clips

    clips, _, _ = load_clips(data, 17, 32, 32, 4)
    held = [c for video in clips[-2:] for c in video]
    assert heldout_psnr(tok, held) == pytest.approx(report["psnr_after"], abs=1e-3)
    random_init = load_video_tokenizer("tiny")
    assert heldout_psnr(random_init, held) == pytest.approx(report["psnr_before"], abs=1e-3)
    assert "held-out reconstruction PSNR" in capsys.readouterr().out


def test_augment_clip_keeps_content_up_to_colour_and_flips():
    from cosmos_nemo.tokenizers.train import augment_clip

    clip = torch.rand(3, 5, 8, 6) * 2 - 1
    rng = np.random.default_rng(0)
    seen_inverted = seen_permuted = False
    for _ in range(20):
        out = augment_clip(clip, rng)
        assert out.shape == clip.shape
        # the multiset of |values| is unchanged (permutation, sign and flips only move or negate values)
        assert torch.equal(out.abs().flatten().sort().values, clip.abs().flatten().sort().values)
        inverted = not torch.equal(out.flatten().sort().values, clip.flatten().sort().values)
        seen_inverted |= inverted
        channel_means = sorted(out.mean(dim=(1, 2, 3)).abs().tolist())
        assert channel_means == pytest.approx(sorted(clip.mean(dim=(1, 2, 3)).abs().tolist()), abs=1e-6)
        seen_permuted |= not torch.allclose(out.abs().mean(dim=(1, 2, 3)), clip.abs().mean(dim=(1, 2, 3)))
    assert seen_inverted and seen_permuted


@pytest.mark.parametrize("name", ["tiny", "tiny-cv"])
def test_orthonormal_haar_training_form_computes_the_same_function(name):
    """Entering the orthonormal form (Haar without the 2·√2 rescale, first/last convs rescaled) changes no
    output, and leaving it restores the weights."""
    from cosmos_nemo.tokenizers.train import orthonormal_haar

    tok = load_video_tokenizer(name, seed=3).eval()
    before = {k: v.clone() for k, v in tok.state_dict().items()}
    x = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    with torch.no_grad():
        ref = tok(x)
        with orthonormal_haar(tok):
            assert tok.encoder.encoder.patcher3d.orthonormal and tok.decoder.decoder.unpatcher3d.orthonormal
            inside = tok(x)
        after = tok(x)
    torch.testing.assert_close(inside, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(after, ref, rtol=1e-5, atol=1e-5)  # the gain g is not a power of two: ulp-level
    for k, v in tok.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=1e-6, atol=1e-9)
    # The orthonormal patcher really is orthonormal: it preserves the signal's energy.
    p = tok.encoder.encoder.patcher3d
    p.orthonormal = True
    y = torch.randn(1, 3, 1 + 4 * 2, 16, 16)
    padded = torch.cat([y[:, :, :1].repeat_interleave(p.patch_size - 1, dim=2), y], dim=2)
    assert p(y).pow(2).sum().item() == pytest.approx(padded.pow(2).sum().item(), rel=1e-5)
    p.orthonormal = False


def test_motion_weights_mark_changing_pixels_and_the_loss_is_their_weighted_mean():
    from cosmos_nemo.tokenizers.train import motion_weights, reconstruction_loss

    clip = torch.zeros(1, 3, 3, 4, 4)
    clip[0, 1, 1, 2, 3] = 0.5  # one pixel lights up in frame 1 (green channel) and goes dark again in frame 2
    w = motion_weights(clip, 4.0)
    expected = torch.ones(1, 1, 3, 4, 4)
    expected[0, 0, :, 2, 3] = 1 + 4 * 0.5  # changes into frame 1 (frames 0, 1) and out of it (frames 1, 2)
    assert torch.equal(w, expected)
    rec = clip + 0.1
    plain = torch.nn.functional.l1_loss(rec, clip) + torch.nn.functional.mse_loss(rec, clip)
    assert reconstruction_loss(rec, clip, 0.0) == plain
    err = (rec - clip).abs() + (rec - clip).square()
    weighted = (err * w).sum() / w.expand_as(err).sum()
    assert torch.allclose(reconstruction_loss(rec, clip, 4.0), weighted)


def test_clip_stride_gives_overlapping_clips(tmp_path):
    from cosmos_nemo.io.video import read_frames, write_mp4
    from cosmos_nemo.tokenizers.train import _resize_crop, load_clips

    frames = (np.arange(21)[:, None, None, None] * 10 + np.zeros((21, 16, 16, 3))).astype(np.uint8)
    write_mp4(tmp_path / "v.mp4", frames, crf=0)
    decoded = read_frames(tmp_path / "v.mp4")
    per_video, _, _ = load_clips(tmp_path, 9, 16, 16, clips_per_video=10, clip_stride=4)
    assert len(per_video[0]) == 4  # starts 0, 4, 8, 12 (16 would end past frame 20)
    for i, clip in enumerate(per_video[0]):
        assert torch.equal(clip, _resize_crop(decoded[4 * i:4 * i + 9], 16, 16))
    per_video, _, _ = load_clips(tmp_path, 9, 16, 16, clips_per_video=10)  # default: non-overlapping
    assert len(per_video[0]) == 2


def test_a_continuous_tokenizer_is_saved_with_its_latent_statistics(tmp_path):
    """tiny-cv: `mean_std.safetensors` = per-channel, per-latent-frame mean and std of the saved tokenizer's latents
    over its training clips (recomputed here from the folder), which `prepare latents` reads."""
    from safetensors.torch import load_file

    from cosmos_nemo.tokenizers.train import load_clips, split_heldout

    data = tmp_path / "videos"
    for i in range(3):
        _moving_shapes(data / f"clip_{i}.mp4", seed=i)
    out = tmp_path / "tok"
    args = ["train-tokenizer", "--data", str(data), "--output", str(out), "--tokenizer", "tiny-cv", "--height", "32",
            "--width", "32", "--steps", "2", "--no-progress", "--threads", "1"]
    assert main(args) == 0
    stats = load_file(str(out / "mean_std.safetensors"))
    tok = load_video_tokenizer(out)
    clips, _, _ = load_clips(data, 17, 32, 32, 4)
    train, _ = split_heldout(clips, 0)
    with torch.no_grad():
        z = torch.cat([tok.encode(c[None]).float() for c in train])  # [N, C, T, h, w]
    assert stats["mean"].shape == (tok.latent_channels, 5)
    torch.testing.assert_close(stats["mean"], z.mean(dim=(0, 3, 4)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats["std"], z.std(dim=(0, 3, 4)), rtol=1e-5, atol=1e-6)
    from cosmos_nemo.data_prep.vae import read_mean_std

    mean, std = read_mean_std(out / "mean_std.safetensors", tok.latent_channels)
    assert torch.equal(mean, stats["mean"]) and torch.equal(std, stats["std"])
    # a discrete tokenizer has no latent statistics
    dv = [a if a != "tiny-cv" else "tiny" for a in args]
    dv[dv.index("--output") + 1] = str(tmp_path / "dv")
    assert main(dv) == 0
    assert not (tmp_path / "dv" / "mean_std.safetensors").exists()
