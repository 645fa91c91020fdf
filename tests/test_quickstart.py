"""End to end: `cosmos-nemo quickstart` at its smallest size (DESIGN: tests and benchmarks)."""

import json
import os
import subprocess
import sys

import pytest
from quickstart_checks import check_heldout_report


@pytest.mark.slow
def test_quickstart_smallest_size_runs_every_step(tmp_path):
    work = tmp_path / "qs"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "cosmos_nemo", "quickstart", "--workdir", str(work), "--num-videos", "6",
           "--video-frames", "17", "--frames", "9", "--stride", "8", "--size", "32", "--tokenizer-steps", "20",
           "--train-steps", "4", "--resume-steps", "2", "--global-batch", "2", "--num-generate", "1"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for i in range(1, 9):
        assert f"[{i}/8]" in out
    assert "resumed at step 5 and ran to step 6" in out

    run_dir = next((work / "runs").glob("*/*/quickstart"))
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if "train/loss" in json.loads(line)]
    assert steps == [1, 2, 3, 4, 5, 6]  # the resumed run continued, it did not start over
    assert (run_dir / "checkpoints" / "latest_checkpoint.txt").read_text().strip().endswith("iter_000000006")
    assert json.loads((work / "tokens" / "dataset.json").read_text())
    generated = sorted((work / "generated" / "generated").glob("*.mp4"))
    assert len(generated) == 1
    for side in ("generated", "reconstructed"):
        report = json.loads((work / "generated" / side / "tokenbench.json").read_text())
        assert report["means"]["psnr"] > 5.0  # a real comparison of decodable videos, not NaN
    assert list((work / "generated").glob("*.png"))

    # The printed held-out PSNRs are the real run's: recompute them from the written videos with scikit-image
    # and the simulator's own ball masks.
    check_heldout_report(out, work, work / "generated", "reference", "generated", "reconstructed", "doc*.mp4",
                         context_frames=5, video_frames=17, size=32)

