"""Shared checks of the quickstarts' end-to-end tests."""

import json

import pytest


def check_heldout_report(stdout, work, out, ref_dir, gen_dir, rec_dir, pattern, context_frames, video_frames, size,
                         gen_prefix=""):
    """Recompute `heldout_psnr.json` (and the printed means) from the mp4s: skimage PSNR of the generated frames
    and of the repeat-last-context-frame baseline, and the reconstruction's PSNR on the simulator's ball pixels."""
    import re

    import numpy as np
    from skimage.metrics import peak_signal_noise_ratio

    from cosmos_nemo.data_prep.sample_data import foreground_masks
    from cosmos_nemo.io.video import read_frames
    from cosmos_nemo.quickstart import BALL_SCALE, SAMPLE_FPS

    report = json.loads((out / "heldout_psnr.json").read_text())
    refs = sorted((out / ref_dir).glob(pattern))
    assert len(refs) == len(report["clips"]) >= 1
    printed = re.search(r"generated frames only: .* ([\d.]+) dB vs repeat-last-context-frame ([\d.]+) dB", stdout)
    assert printed, stdout[-2000:]
    assert float(printed.group(1)) == pytest.approx(report["means"]["generated"], abs=0.006)
    assert float(printed.group(2)) == pytest.approx(report["means"]["repeat_last_frame"], abs=0.006)
    for ref_path, scores in zip(refs, report["clips"]):
        clip = read_frames(ref_path)
        generated = read_frames(out / gen_dir / f"{gen_prefix}{ref_path.name}")
        recon = read_frames(out / rec_dir / ref_path.name)
        n = context_frames
        repeat = np.repeat(clip[n - 1: n], len(clip) - n, axis=0)
        assert scores["generated"] == pytest.approx(peak_signal_noise_ratio(clip[n:], generated[n:]), abs=1e-3)
        assert scores["repeat_last_frame"] == pytest.approx(peak_signal_noise_ratio(clip[n:], repeat), abs=1e-3)
        # Which sample video and frames the clip came from: recover it by matching against the sample videos.
        source, start = _find_source(clip, work / "sample" / "videos")
        mask = foreground_masks(0, int(source.stem.split("_")[1]), video_frames, size, size, SAMPLE_FPS, BALL_SCALE)
        mask = mask[start: start + len(clip)]
        assert mask.any()
        err = (clip.astype(np.float64) - recon.astype(np.float64)) ** 2
        assert scores["reconstruction_balls"] == pytest.approx(10 * np.log10(255 ** 2 / err[mask].mean()), abs=1e-3)


def _find_source(clip, videos):
    """The sample video and start frame whose frames equal `clip`'s (up to the lossless writer's rounding)."""
    from cosmos_nemo.io.video import read_frames

    best = None
    for path in sorted(videos.glob("*.mp4")):
        frames = read_frames(path)
        for start in range(0, len(frames) - len(clip) + 1):
            diff = float(abs(frames[start: start + len(clip)].astype(int) - clip.astype(int)).mean())
            if best is None or diff < best[0]:
                best = (diff, path, start)
    assert best[0] < 2.0, best
    return best[1], best[2]
