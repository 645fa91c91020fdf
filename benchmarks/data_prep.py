"""Data-prep speed and memory, each against a named peer measured in the same run.

1. Decode: frames/s of `cosmos_nemo.io.video.iter_frames` (PyAV, uint8 RGB, rotation applied) against the
   ffmpeg CLI piping the same files as raw RGB (`ffmpeg -i F -f rawvideo -pix_fmt rgb24 -`), both with
   FFmpeg's automatic threading. Target: ratio >= 1.0.
2. End to end: clips/s of `prepare ar-tokens` with the tiny tokenizer at 1 and 2 workers. Target: >= 1.7x.
3. Memory: peak RSS of a 1-worker `prepare ar-tokens` run (in a fresh process) over the dataset and over a
   4x larger one. Target: flat (the ratio stays near 1).

    python benchmarks/data_prep.py [--work-dir DIR] [--videos 8] [--json out.json]

Benchmarks report numbers; they are not tests. Machines with few cores shared by other jobs give noisy
ratios: run it on an idle machine for figures you quote.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cosmos_nemo.io import synthetic as syn
from cosmos_nemo.io.video import iter_frames, write_mp4


def make_videos(folder: Path, count: int, frames: int, height: int, width: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"v{i:04d}.mp4"
        if not path.exists():
            base = syn.pattern_frames(frames, height, width, seed=seed + i)
            # Add texture so the decoder has real work (flat gradients decode unrealistically fast).
            noise = np.random.default_rng(seed + i).integers(-12, 13, base.shape[1:], dtype=np.int16)
            write_mp4(path, np.clip(base.astype(np.int16) + noise, 0, 255).astype(np.uint8), fps=24, crf=20)
        paths.append(path)
    return paths


def ffmpeg_cli() -> str | None:
    """The ffmpeg on PATH, else the static build of the `imageio-ffmpeg` wheel (installed by
    `scripts/setup.sh --dev`), else None."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return None


def bench_decode(paths: list[Path], repeats: int = 3) -> dict:
    ffmpeg = ffmpeg_cli()
    ours_best, cli_best, n_frames = float("inf"), float("inf"), 0
    for _ in range(repeats):
        t = time.perf_counter()
        n = 0
        for p in paths:
            for chunk in iter_frames(p, chunk_size=32, threads=0):
                n += len(chunk)
        ours_best = min(ours_best, time.perf_counter() - t)
        n_frames = n
        if ffmpeg:
            t = time.perf_counter()
            total = 0
            for p in paths:
                out = subprocess.run([ffmpeg, "-v", "error", "-i", str(p), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                                     check=True, capture_output=True).stdout
                total += len(out)
            cli_best = min(cli_best, time.perf_counter() - t)
    result = {"frames": n_frames, "pyav_fps": n_frames / ours_best}
    if ffmpeg:
        version = subprocess.run([ffmpeg, "-version"], capture_output=True, text=True).stdout.split("\n")[0]
        result.update({"ffmpeg_pipe_fps": n_frames / cli_best, "ratio": (n_frames / ours_best) / (n_frames / cli_best),
                       "ffmpeg": version})
    else:
        result["ffmpeg"] = "no ffmpeg CLI on this machine (install ffmpeg or `pip install imageio-ffmpeg` for the comparison)"
    return result


_PREP_SNIPPET = """
import json, resource, sys, time
from pathlib import Path
from cosmos_nemo.data_prep.ar_tokens import ARTokensConfig, prepare_ar_tokens
args = json.loads(sys.argv[1])
t = time.perf_counter()
rep = prepare_ar_tokens(ARTokensConfig(input_videos_dir=Path(args['inp']), output_prefix=Path(args['out']),
    encoder_path='tiny', width=args['w'], height=args['h'], num_context_frames=args['frames'], stride=args['stride'],
    workers=args['workers'], progress=False))
dt = time.perf_counter() - t
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
print(json.dumps({'seconds': dt, 'clips': rep.num_documents, 'rss_mb': me.ru_maxrss / 1024,
                  'worker_rss_mb': kids.ru_maxrss / 1024, 'cpu_seconds': cpu}))
"""


def run_prepare(inp: Path, out: Path, workers: int, h: int, w: int, frames: int, stride: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    args = json.dumps({"inp": str(inp), "out": str(out), "workers": workers, "h": h, "w": w, "frames": frames, "stride": stride})
    res = subprocess.run([sys.executable, "-c", _PREP_SNIPPET, args], check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-dir", type=Path, default=None, help="where to write videos and outputs (default: a temp dir)")
    ap.add_argument("--videos", type=int, default=8, help="videos in the 1x dataset")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="cosmos_nemo_bench_"))
    results: dict = {"cpu_count": os.cpu_count()}

    dec_videos = make_videos(work / "decode", args.videos, frames=96, height=360, width=640, seed=100)
    results["decode"] = bench_decode(dec_videos)
    d = results["decode"]
    print(f"decode: PyAV {d['pyav_fps']:.0f} frames/s"
          + (f" vs ffmpeg rgb24 pipe {d['ffmpeg_pipe_fps']:.0f} frames/s -> ratio {d['ratio']:.2f} ({d['ffmpeg']})"
             if "ratio" in d else f"; {d['ffmpeg']}"))

    geometry = dict(h=128, w=128, frames=17, stride=16)  # tiny tokenizer 4x8x8 -> 5x16x16 grid
    small = work / "e2e_1x"
    make_videos(small, args.videos, frames=65, height=240, width=320, seed=200)
    one = run_prepare(small, work / "out_w1", 1, **geometry)
    two = run_prepare(small, work / "out_w2", 2, **geometry)
    same = all((work / "out_w1" / f).read_bytes() == (work / "out_w2" / f).read_bytes()
               for f in ("tokens.bin", "tokens.idx", "manifest.jsonl", "dataset.json"))
    results["end_to_end"] = {
        "clips": one["clips"],
        "clips_per_s_1_worker": one["clips"] / one["seconds"],
        "clips_per_s_2_workers": two["clips"] / two["seconds"],
        "speedup": one["seconds"] / two["seconds"],
        "cpu_seconds_1_worker": one["cpu_seconds"],
        "cpu_seconds_2_workers": two["cpu_seconds"],
        "load_average_1min": os.getloadavg()[0],
        "outputs_identical": same,
    }
    e = results["end_to_end"]
    print(f"end to end ({e['clips']} clips, tiny tokenizer): 1 worker {e['clips_per_s_1_worker']:.2f} clips/s, "
          f"2 workers {e['clips_per_s_2_workers']:.2f} clips/s -> speedup {e['speedup']:.2f}x; outputs identical: {same}; "
          f"CPU seconds {e['cpu_seconds_1_worker']:.1f} vs {e['cpu_seconds_2_workers']:.1f}; "
          f"load average {e['load_average_1min']:.1f} on {os.cpu_count()} cores")

    big = work / "e2e_4x"
    big.mkdir(parents=True, exist_ok=True)
    make_videos(big, 4 * args.videos, frames=65, height=240, width=320, seed=200)
    four = run_prepare(big, work / "out_4x", 1, **geometry)
    results["memory"] = {"rss_mb_1x": one["rss_mb"], "rss_mb_4x": four["rss_mb"], "ratio": four["rss_mb"] / one["rss_mb"],
                         "clips_1x": one["clips"], "clips_4x": four["clips"]}
    m = results["memory"]
    print(f"peak RSS (1 worker): 1x ({m['clips_1x']} clips) {m['rss_mb_1x']:.0f} MB, 4x ({m['clips_4x']} clips) "
          f"{m['rss_mb_4x']:.0f} MB -> ratio {m['ratio']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
