"""`cosmos-nemo evaluate tokenbench` end to end: reference numbers, pairing, outputs, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from skimage.metrics import structural_similarity

from cosmos_nemo.cli import main
from cosmos_nemo.eval.sources import clip_length, mediapy_qp, reference_resize_shape, resize_frames, subset_of
from cosmos_nemo.eval.synthetic import synthetic_frames
from cosmos_nemo.io.video import read_frames, write_mp4

EPS32 = np.finfo(np.float32).eps


def ref_psnr(v0, v1):
    mse = ((v0.astype(np.float32) - v1.astype(np.float32)) ** 2).mean()
    return float(20 * np.log10(255.0 / (np.sqrt(mse) + EPS32)))


def ref_ssim(v0, v1):
    return float(np.mean([structural_similarity(a.astype(np.float32), b.astype(np.float32), data_range=255.0,
                                                channel_axis=-1) for a, b in zip(v0, v1)]))


def strict_json(path: Path):
    """Parse refusing NaN/Infinity, which Python's json would otherwise accept."""
    def refuse(token):
        raise AssertionError(f"{path} contains {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def run(gt, gen, *extra) -> int:
    return main(["evaluate", "tokenbench", "--gtpath", str(gt), "--targetpath", str(gen), *extra])


@pytest.fixture
def folders(tmp_path):
    """Pairs of odd sizes at several qualities, named like TokenBench subsets."""
    gt, gen = tmp_path / "gt", tmp_path / "gen"
    specs = [("bdd_100_a.mp4", 33, 47, 18), ("bdd_100_b.mp4", 21, 25, 35), ("panda_c.mp4", 40, 31, 28), ("panda_d.mp4", 17, 57, 45)]
    for i, (name, h, w, crf) in enumerate(specs):
        frames = synthetic_frames(7, h, w, seed=i)
        write_mp4(gt / name, frames, crf=2)
        write_mp4(gen / name, frames, crf=crf)
    return gt, gen, [s[0] for s in specs]


def test_outputs_equal_direct_computation(folders, capsys):
    gt, gen, names = folders
    assert run(gt, gen, "--chunk-size", "3") == 0
    psnr, ssim = dict(strict_json(gen / "psnr.json")), dict(strict_json(gen / "ssim.json"))
    assert sorted(psnr) == sorted(ssim) == sorted(names)
    for name in names:
        v0, v1 = read_frames(gt / name), read_frames(gen / name)
        assert abs(psnr[name] - ref_psnr(v0, v1)) < 1e-4
        assert abs(ssim[name] - ref_ssim(v0, v1)) < 1e-6
    report = strict_json(gen / "tokenbench.json")
    assert report["means"]["psnr"] == pytest.approx(np.mean(list(psnr.values())), abs=1e-12)
    assert report["means"]["ssim"] == pytest.approx(np.mean(list(ssim.values())), abs=1e-12)
    assert set(report["subsets"]) == {"bdd_100_", "panda_"}
    assert report["subsets"]["panda_"]["count"] == 2
    assert report["subsets"]["panda_"]["ssim"] == pytest.approx((ssim["panda_c.mp4"] + ssim["panda_d.mp4"]) / 2)
    assert report["videos"][0]["frames"] == 7 and report["skipped"] == []
    assert report["settings"]["frames"] == "as decoded" and report["settings"]["chunk_size"] == 3
    out = capsys.readouterr().out
    assert "all" in out and "PSNR" in out and "bdd_100_" in out


def test_workers_do_not_change_results(folders):
    gt, gen, _ = folders
    assert run(gt, gen, "--workers", "1") == 0
    one = strict_json(gen / "tokenbench.json")["videos"]
    assert run(gt, gen, "--workers", "3", "--chunk-size", "2") == 0
    assert strict_json(gen / "tokenbench.json")["videos"] == one


def test_pairing_top_level_and_recursive(tmp_path):
    gt, gen = tmp_path / "gt", tmp_path / "gen"
    frames = synthetic_frames(3, 16, 20)
    for rel in ("a.mp4", "sub/b.mp4", "sub/deeper/c.mp4", "only_gt.mp4"):
        write_mp4(gt / rel, frames, crf=0)
    for rel in ("a.mp4", "sub/b.mp4", "sub/deeper/c.mp4", "other/b.mp4", "only_gen.mp4"):
        write_mp4(gen / rel, frames, crf=30)
    (gen / "notes.txt").write_text("not a video")
    assert run(gt, gen) == 1  # two files have no counterpart: unscored, and --max-skipped is 0 by default
    report = strict_json(gen / "tokenbench.json")  # written all the same
    assert [v["name"] for v in report["videos"]] == ["a.mp4"]
    assert {s["name"] for s in report["skipped"]} == {"only_gt.mp4", "only_gen.mp4"}
    assert run(gt, gen, "--max-skipped", "2") == 0
    assert run(gt, gen, "--recursive", "--max-skipped", "3") == 0
    report = strict_json(gen / "tokenbench.json")
    assert [v["name"] for v in report["videos"]] == ["a.mp4", "sub/b.mp4", "sub/deeper/c.mp4"]
    skipped = {s["name"]: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"only_gt.mp4", "only_gen.mp4", "other/b.mp4"}
    assert "only in the generated folder" in skipped["other/b.mp4"]


def _zero_frame_mp4(path: Path) -> None:
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=24)
    stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
    container.start_encoding()  # write the header now: no frame will ever arrive to trigger it
    for packet in stream.encode():  # flush an encoder that never got a frame
        container.mux(packet)
    container.close()
    assert path.is_file()


def test_bad_pairs_are_reported_and_excluded(tmp_path, capsys):
    gt, gen = tmp_path / "gt", tmp_path / "gen"
    frames = synthetic_frames(6, 24, 30)
    write_mp4(gt / "good.mp4", frames, crf=0)
    write_mp4(gen / "good.mp4", frames, crf=30)
    write_mp4(gt / "short.mp4", frames, crf=0)
    write_mp4(gen / "short.mp4", frames[:4], crf=30)
    write_mp4(gt / "long.mp4", frames[:3], crf=0)
    write_mp4(gen / "long.mp4", frames, crf=30)
    write_mp4(gt / "size.mp4", frames, crf=0)
    write_mp4(gen / "size.mp4", synthetic_frames(6, 24, 32), crf=30)
    write_mp4(gt / "garbage.mp4", frames, crf=0)
    (gen / "garbage.mp4").write_bytes(b"\x00\x01not an mp4 at all" * 10)
    write_mp4(gt / "empty.mp4", frames, crf=0)
    (gen / "empty.mp4").write_bytes(b"")
    write_mp4(gen / "noframes.mp4", frames, crf=0)
    _zero_frame_mp4(gt / "noframes.mp4")
    write_mp4(gt / "tiny.mp4", synthetic_frames(3, 5, 9), crf=0)
    write_mp4(gen / "tiny.mp4", synthetic_frames(3, 5, 9), crf=30)
    assert run(gt, gen, "--max-skipped", "7") == 0
    report = strict_json(gen / "tokenbench.json")
    assert [v["name"] for v in report["videos"]] == ["good.mp4"]
    reasons = {s["name"]: s["reason"] for s in report["skipped"]}
    assert reasons["short.mp4"] == "frame counts differ: reference 6 frames, generated 4 frames"
    assert reasons["long.mp4"] == "frame counts differ: reference 3 frames, generated 6 frames"
    assert reasons["size.mp4"] == "frame sizes differ: reference 30x24, generated 32x24"
    assert "garbage.mp4" in reasons["garbage.mp4"] and "not a readable media file" in reasons["garbage.mp4"]
    assert "zero-byte" in reasons["empty.mp4"]
    assert "noframes.mp4" in reasons["noframes.mp4"]
    assert "smaller than the 7x7 SSIM window" in reasons["tiny.mp4"]
    assert [n for n, _ in strict_json(gen / "psnr.json")] == ["good.mp4"]
    assert "skipped 7" in capsys.readouterr().out


def test_tiny_frames_are_fine_without_ssim(tmp_path):
    gt, gen = tmp_path / "gt", tmp_path / "gen"
    write_mp4(gt / "t.mp4", synthetic_frames(3, 5, 9), crf=0)
    write_mp4(gen / "t.mp4", synthetic_frames(3, 5, 9), crf=30)
    assert run(gt, gen, "--metrics", "psnr") == 0
    assert not (gen / "ssim.json").exists()
    v0, v1 = read_frames(gt / "t.mp4"), read_frames(gen / "t.mp4")
    assert strict_json(gen / "psnr.json")[0][1] == pytest.approx(ref_psnr(v0, v1), abs=1e-4)


def test_empty_result_exits_non_zero(tmp_path, capsys):
    gt, gen = tmp_path / "gt", tmp_path / "gen"
    gt.mkdir()
    gen.mkdir()
    assert run(gt, gen) == 1
    assert "no pairs" in capsys.readouterr().err
    write_mp4(gt / "a.mp4", synthetic_frames(4, 16, 16), crf=0)
    write_mp4(gen / "a.mp4", synthetic_frames(2, 16, 16), crf=0)
    assert run(gt, gen) == 1
    err = capsys.readouterr().err
    assert "no pair could be scored" in err and "frame counts differ" in err
    assert not (gen / "psnr.json").exists() and not (gen / "tokenbench.json").exists()
    assert run(tmp_path / "missing", gen) == 1
    assert "is not a folder" in capsys.readouterr().err


def test_metrics_without_weights_are_refused(folders, capsys):
    gt, gen, _ = folders
    assert run(gt, gen, "--metrics", "psnr,lpips") == 1
    assert "vgg16-397923af.pth" in capsys.readouterr().err
    assert run(gt, gen, "--metrics", "fvd") == 1
    assert "i3d_torchscript.pt" in capsys.readouterr().err
    assert not (gen / "tokenbench.json").exists()
    with pytest.raises(SystemExit):
        run(gt, gen, "--metrics", "psnr,fid")
    assert run(gt, gen, "--reencode") == 2


def test_help_mentions_reencode_default(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "tokenbench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--reencode" in text and "Off by default" in text and "SHORT side" in text


# ---- the reference token_bench.py preprocessing ----

def test_reference_resize_shapes_known_cases():
    assert reference_resize_shape(720, 1280, 320) == (320, 569)  # int(1280*320/720 + 0.5) = int(569.33)
    assert reference_resize_shape(1280, 720, 320) == (569, 320)
    assert reference_resize_shape(45, 61, 32) == (32, 43)  # 43.38 -> 43
    assert reference_resize_shape(40, 50, 16) == (16, 20)
    assert reference_resize_shape(48, 50, 32) == (32, 33)  # 33.33
    assert reference_resize_shape(12, 30, 10) == (10, 25)  # 25.0 exactly
    assert reference_resize_shape(100, 100, 7) == (7, 7)


def _lanczos_numpy(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Independent separable Lanczos-3 resampling, with Pillow's support scaling, in float64."""
    def weights(n_in, n_out):
        scale = n_in / n_out
        support = 3.0 * max(scale, 1.0)
        m = np.zeros((n_out, n_in))
        for i in range(n_out):
            center = (i + 0.5) * scale
            lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in)
            x = (np.arange(lo, hi) - center + 0.5) / max(scale, 1.0)
            w = np.sinc(x) * np.sinc(x / 3.0) * (np.abs(x) < 3.0)
            m[i, lo:hi] = w / w.sum()
        return m

    wy, wx = weights(img.shape[0], out_h), weights(img.shape[1], out_w)
    return np.einsum("ij,jkc,lk->ilc", wy, img.astype(np.float64), wx)


@pytest.mark.parametrize("hw,short", [((45, 61), 32), ((33, 20), 48), ((60, 80), 30)])
def test_resize_is_pillow_lanczos(hw, short):
    frames = synthetic_frames(2, *hw, seed=3)
    shape = reference_resize_shape(*hw, short)
    ours = resize_frames(frames, shape)
    assert ours.shape == (2, *shape, 3) and ours.dtype == np.uint8
    for f, o in zip(frames, ours):
        # What mediapy.resize_video does per frame:
        pil = np.asarray(Image.fromarray(f).resize(shape[::-1], resample=Image.Resampling.LANCZOS))
        assert np.array_equal(o, pil)
        # ...and an independent Lanczos agrees up to Pillow's 8-bit intermediate rounding.
        assert np.abs(np.clip(_lanczos_numpy(f, *shape), 0, 255) - o).max() <= 2.0


def test_clip_length():
    assert clip_length(30.0, None) == 300
    assert clip_length(60.0, None) == 600
    assert clip_length(29.97, None) == 300
    assert clip_length(0.0, None) == 300
    assert clip_length(60.0, 17) == 17
    assert clip_length(24.0, 1000) == 300
    assert mediapy_qp(480, 640) == 20 and mediapy_qp(482, 640) == 28


def test_preprocessing_matches_reference_steps(tmp_path):
    gt, gen = tmp_path / "gt", tmp_path / "gen"
    frames = synthetic_frames(9, 24, 40, seed=5)
    write_mp4(gt / "p.mp4", frames, crf=0)
    write_mp4(gen / "p.mp4", frames, crf=33)
    assert run(gt, gen, "--width", "16", "--num_frames", "5", "--chunk-size", "2") == 0
    report = strict_json(gen / "tokenbench.json")
    video = report["videos"][0]
    assert (video["frames"], video["height"], video["width"]) == (5, 16, 27)

    def reference(path):
        v = read_frames(path)[:300][:5]
        return np.stack([np.asarray(Image.fromarray(f).resize((27, 16), Image.Resampling.LANCZOS)) for f in v])

    v0, v1 = reference(gt / "p.mp4"), reference(gen / "p.mp4")
    assert abs(video["psnr"] - ref_psnr(v0, v1)) < 1e-4
    assert abs(video["ssim"] - ref_ssim(v0, v1)) < 1e-6
    assert "without re-encode" in report["settings"]["frames"]


def test_reencode_scores_reencoded_frames(tmp_path):
    gt, gen = tmp_path / "gt", tmp_path / "gen"
    frames = synthetic_frames(6, 24, 40, seed=6)
    write_mp4(gt / "r.mp4", frames, crf=0)
    write_mp4(gen / "r.mp4", frames, crf=25)
    assert run(gt, gen, "--num_frames", "4") == 0
    plain = strict_json(gen / "tokenbench.json")["videos"][0]
    assert run(gt, gen, "--num_frames", "4", "--width", "15", "--reencode") == 0
    report = strict_json(gen / "tokenbench.json")
    video = report["videos"][0]
    assert (video["frames"], video["height"], video["width"]) == (4, 15, 25)
    # Both sides went through the same lossy qp-20 encode of near-identical input: high but finite PSNR.
    assert 30 < video["psnr"] < 200 and 0.8 < video["ssim"] <= 1.0
    assert plain["psnr"] != video["psnr"]
    assert "with mp4 re-encode" in report["settings"]["frames"]
    assert list(gt.iterdir()) == [gt / "r.mp4"]  # nothing written beside the user's videos


def test_subset_names():
    assert subset_of("bdd_100_x.mp4") == "bdd_100_"
    assert subset_of("sub/egoexo4D_cam01.mp4") == "egoexo4D_"
    assert subset_of("robot_arm_1.mp4") == "robot_"
    assert subset_of("plain.mp4") == "(no prefix)"


def test_contact_sheet_of_worst_pairs(folders):
    gt, gen, names = folders
    assert run(gt, gen, "--contact-sheet", "2") == 0
    report = strict_json(gen / "tokenbench.json")
    assert report["contact_sheet"] == "tokenbench_worst.png"
    sheet = np.asarray(Image.open(gen / "tokenbench_worst.png").convert("RGB"))
    worst_two = sorted(report["videos"], key=lambda v: v["psnr"])[:2]
    # Two rows, each reference | generated | difference at the frame's own size (all are under 144 px).
    assert sheet.shape[0] == sum(v["height"] + 14 + 8 for v in worst_two)
    assert sheet.shape[1] >= max(3 * v["width"] + 16 for v in worst_two)
    (gen / "tokenbench_worst.png").unlink()
    assert run(gt, gen, "--contact-sheet", "0") == 0
    assert not (gen / "tokenbench_worst.png").exists() and "contact_sheet" not in strict_json(gen / "tokenbench.json")


def test_contact_sheet_shows_the_worst_frame(tmp_path):
    """The row of a pair holds its largest-error frame: here frame 2, the only one that differs."""
    gt, gen = tmp_path / "gt", tmp_path / "gen"
    frames = synthetic_frames(4, 20, 30)
    damaged = frames.copy()
    damaged[2] = 255 - damaged[2]
    write_mp4(gt / "a.mp4", frames, crf=0, pix_fmt="yuv444p")
    write_mp4(gen / "a.mp4", damaged, crf=0, pix_fmt="yuv444p")
    assert run(gt, gen) == 0
    sheet = np.asarray(Image.open(gen / "tokenbench_worst.png").convert("RGB"))
    ref, out = read_frames(gt / "a.mp4"), read_frames(gen / "a.mp4")
    top = 14 + 4
    np.testing.assert_array_equal(sheet[top : top + 20, 4 : 4 + 30], ref[2])
    np.testing.assert_array_equal(sheet[top : top + 20, 38 : 38 + 30], out[2])
