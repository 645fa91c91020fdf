"""End to end: `cosmos-nemo quickstart --family diffusion` at its smallest size (DESIGN: tests and benchmarks)."""

import json
import math
import os
import subprocess
import sys

import pytest
from quickstart_checks import check_heldout_report


@pytest.mark.slow
def test_diffusion_quickstart_smallest_size_runs_every_step(tmp_path):
    work = tmp_path / "qs"
    # The smallest sizes that still exercise every step: 6 videos of 17 frames give 12 clips of 9 frames (3
    # latent frames, so Video2World conditions on 2 and generates 1), 32x32 pixels (2x2 DiT tokens a frame).
    sizes = {"--num-videos": 6, "--video-frames": 17, "--frames": 9, "--stride": 8, "--size": 32, "--tokenizer-steps": 20,
             "--train-steps": 10, "--resume-steps": 2, "--global-batch": 4, "--num-generate": 1, "--sampling-steps": 4}
    flags = [str(v) for item in sizes.items() for v in item]
    result = subprocess.run([sys.executable, "-m", "cosmos_nemo", "quickstart", "--family", "diffusion", "--workdir",
                             str(work), *flags], capture_output=True, text=True, timeout=900,
                            env=dict(os.environ, PYTHONWARNINGS="ignore"), stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert [i for i in range(1, 10) if f"=== [{i}/9]" not in out] == []  # every step printed its banner
    assert "resumed at step 11 and ran to step 12" in out

    run_dir = next((work / "runs").glob("*/*/quickstart_diffusion"))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == list(range(1, 13))  # resumed, did not start over
    assert (run_dir / "checkpoints" / "latest_checkpoint.txt").read_text().strip().endswith("iter_000000012")
    vals = [r["val/loss"] for r in rows if "val/loss" in r]
    assert len(vals) >= 2 and vals[-1] < vals[0], vals  # post-training lowered the validation loss
    assert "validation loss:" in out

    assert (work / "tokenizer" / "mean_std.safetensors").is_file()
    assert json.loads((work / "latents" / "dataset.json").read_text())["documents"] == 12
    gen = work / "generated"
    for mode in ("t2w", "v2w"):
        assert len(list((gen / "generated").glob(f"{mode}_doc*.mp4"))) == 1
    generated = json.loads((gen / "generated" / "tokenbench.json").read_text())
    reconstructed = json.loads((gen / "reconstructed" / "tokenbench.json").read_text())
    psnrs = [generated["subsets"][s]["psnr"] for s in ("t2w_", "v2w_")] + [reconstructed["means"]["psnr"]]
    assert all(math.isfinite(p) and p > 5.0 for p in psnrs), psnrs  # real comparisons of decodable videos
    assert "TokenBench PSNR:   T2W" in out and "V2W" in out
    assert list(gen.glob("doc*.png"))

    # The printed held-out PSNRs are the real run's (Video2World from the first 5 frames vs repeating frame 4).
    check_heldout_report(out, work, gen, "held_out", "generated", "reconstructed", "doc*.mp4", context_frames=5,
                         video_frames=17, size=32, gen_prefix="v2w_")
