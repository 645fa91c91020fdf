"""`sample-data`: deterministic, decodes to the requested frame count, captions match the simulation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cosmos_nemo.cli import main as cli_main
from cosmos_nemo.data_prep import sample_data as sd
from cosmos_nemo.io.video import probe, read_frames


def test_deterministic_and_decodes_to_requested_frames(tmp_path):
    a = sd.generate_sample_dataset(tmp_path / "a", num_videos=3, seed=5, num_frames=17, height=48, width=64, fps=8)
    b = sd.generate_sample_dataset(tmp_path / "b", num_videos=3, seed=5, num_frames=17, height=48, width=64, fps=8)
    assert [p.name for p in a] == ["sample_0000.mp4", "sample_0001.mp4", "sample_0002.mp4"]
    for pa, pb in zip(a, b):
        assert pa.read_bytes() == pb.read_bytes()
        frames = read_frames(pa)
        assert frames.shape == (17, 48, 64, 3)
        info = probe(pa)
        assert (info.fps, info.num_frames) == (8.0, 17)
    for stem in ("sample_0000", "sample_0001", "sample_0002"):
        assert (tmp_path / "a/metas" / f"{stem}.txt").read_text() == (tmp_path / "b/metas" / f"{stem}.txt").read_text()
    # A different seed gives different videos; growing the set keeps the earlier ones.
    c = sd.generate_sample_dataset(tmp_path / "c", num_videos=4, seed=6, num_frames=17, height=48, width=64, fps=8)
    assert c[0].read_bytes() != a[0].read_bytes()
    d = sd.generate_sample_dataset(tmp_path / "d", num_videos=4, seed=5, num_frames=17, height=48, width=64, fps=8)
    assert d[2].read_bytes() == a[2].read_bytes()
    # No temporary files are left behind.
    assert not [p for p in (tmp_path / "a").rglob(".*")]


def test_jsonl_and_metas_layout(tmp_path):
    paths = sd.generate_sample_dataset(tmp_path, num_videos=2, seed=0, num_frames=5, height=32, width=32)
    records = [json.loads(line) for line in (tmp_path / "prompts.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for rec, path in zip(records, paths):
        assert set(rec) == {"prompt", "visual_input"}
        assert (tmp_path / rec["visual_input"]).resolve() == path.resolve()
        assert rec["prompt"] + "\n" == (tmp_path / "metas" / f"{path.stem}.txt").read_text()


def test_caption_matches_rendered_scene():
    """The caption names the background and every ball colour; the rendered pixels contain those colours."""
    for index in range(6):
        frames, caption = sd.make_clip(seed=1, index=index, num_frames=9, height=64, width=64, fps=12)
        rng = np.random.default_rng([1, index])
        background, balls = sd._choose_scene(rng, 64, 64)
        assert f"{background} background" in caption
        count_word = sd.NUMBER_WORDS[len(balls)]
        assert caption.lower().startswith("a " if len(balls) == 1 else count_word)
        pixels = frames[0].reshape(-1, 3).astype(float)
        for ball in balls:
            assert f"{ball.size} {ball.colour} ball" in caption
            # Somewhere in frame 0 the ball's shaded colour appears: a pixel proportional to its base colour.
            base = np.asarray(sd.BALL_COLOURS[ball.colour], float)
            ratio = pixels / np.maximum(base, 1)
            close = np.abs(ratio - ratio.mean(1, keepdims=True)).max(1) < 0.08
            assert close.sum() >= 4, (ball, caption)


def test_simulation_physics():
    """Free fall follows y = y0 + v0 t + g t²/2 before any contact; collisions conserve momentum."""
    h = w = 200
    ball = sd.Ball("red", "small", 5.0)
    pos = np.array([[100.0, 20.0]])
    vel = np.array([[10.0, 0.0]])
    fps, frames = 20, 5
    traj, log = sd.simulate([ball], pos, vel, frames, h, w, fps, substeps=400)
    t = np.arange(frames) / fps
    g = 2.2 * h
    np.testing.assert_allclose(traj[:, 0, 1], 20 + 0.5 * g * t**2, rtol=0, atol=0.2)
    np.testing.assert_allclose(traj[:, 0, 0], 100 + 10 * t, atol=1e-6)
    assert log.floor_bounces == [0]

    # Head-on collision of two balls with no gravity effect on x: total x-momentum is conserved.
    balls = [sd.Ball("red", "small", 6.0), sd.Ball("blue", "large", 12.0)]
    pos = np.array([[60.0, 100.0], [120.0, 100.0]])
    vel = np.array([[300.0, 0.0], [-100.0, 0.0]])
    traj, log = sd.simulate(balls, pos, vel, 6, 400, 400, 20, substeps=50)
    assert log.collisions == {(0, 1): 1}
    mass = np.array([36.0, 144.0])
    vx_after = np.diff(traj[-2:, :, 0], axis=0)[0] * 20  # finite-difference velocity, no walls hit
    np.testing.assert_allclose((mass * vx_after).sum(), (mass * vel[:, 0]).sum(), rtol=0.02)


def test_cli_sample_data(tmp_path, capsys):
    rc = cli_main(["sample-data", str(tmp_path / "out"), "--num-videos", "2", "--seed", "3", "--num_frames", "9",
                   "--height", "32", "--width", "48"])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "out/videos").iterdir()) == ["sample_0000.mp4", "sample_0001.mp4"]
    assert read_frames(tmp_path / "out/videos/sample_0001.mp4").shape == (9, 32, 48, 3)
    assert cli_main(["sample-data", str(tmp_path / "bad"), "--num-videos", "0"]) == 2


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_videos"):
        sd.generate_sample_dataset(tmp_path, num_videos=0)
    with pytest.raises(ValueError, match="height and width"):
        sd.generate_sample_dataset(tmp_path, height=8)
