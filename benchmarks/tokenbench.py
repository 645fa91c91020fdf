"""TokenBench PSNR+SSIM: cosmos_nemo.eval against the reference method, on the same video pair, in one run.

Three measurements, each in a fresh subprocess so peak RSS is its own:

* metric part: the same decoded uint8 frames (decoded before the clock starts) scored by
  `cosmos_nemo.eval.metrics.score_frames` vs a scikit-image + NumPy per-frame loop (float32 frames,
  `structural_similarity(..., data_range=255, channel_axis=-1)`, squared error summed per frame);
* end to end, reference method: decode each whole video, `.astype(np.float32)` (as TokenBench's
  `read_video(...).astype(np.float32)`), PSNR with one global MSE on the float32 arrays, then the
  per-frame skimage SSIM loop;
* end to end, ours: `evaluate_pair` streaming both files in chunks.

The pair is a synthetic natural-looking clip (`cosmos_nemo.eval.synthetic`) encoded at crf 18 (reference)
and crf 32 (generated), made once and cached in --workdir. Targets on 2 cores: metric part >= 3x, end to
end >= 3x, peak RSS <= 1/4 of the reference method (300-frame 720p pair).

    python benchmarks/tokenbench.py            # 300 frames, 1280x720 (the reference method needs ~11 GB)
    python benchmarks/tokenbench.py --small    # 48 frames, 640x360
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _make_pair(workdir: Path, frames: int, height: int, width: int) -> tuple[Path, Path]:
    from cosmos_nemo.eval.synthetic import synthetic_chunks
    from cosmos_nemo.io.video import write_mp4

    tag = f"{frames}x{height}x{width}"
    gt, gen = workdir / f"gt_{tag}.mp4", workdir / f"gen_{tag}.mp4"
    if not gt.exists():
        print(f"making the reference clip {gt} ...", flush=True)
        write_mp4(gt, synthetic_chunks(frames, height, width, seed=0), fps=30, crf=18)
    if not gen.exists():
        print(f"making the generated clip {gen} ...", flush=True)
        write_mp4(gen, synthetic_chunks(frames, height, width, seed=0), fps=30, crf=32)
    return gt, gen


def _decode_all(path: Path):
    import numpy as np

    from cosmos_nemo.io.video import iter_frames

    return np.concatenate(list(iter_frames(path, chunk_size=32)))


def _skimage_loop(v0, v1) -> tuple[float, float]:
    """The peer: per frame, float32 frames, skimage SSIM and NumPy squared error."""
    import numpy as np
    from skimage.metrics import structural_similarity

    sse, ssims = 0.0, []
    for a, b in zip(v0, v1):
        a32, b32 = a.astype(np.float32), b.astype(np.float32)
        sse += float(((a32 - b32).astype(np.float64) ** 2).sum())
        ssims.append(structural_similarity(a32, b32, data_range=255.0, channel_axis=-1))
    mse = sse / v0.size
    return float(20 * np.log10(255.0 / (np.sqrt(mse) + np.finfo(np.float32).eps))), float(np.mean(ssims))


def _child(mode: str, gt: Path, gen: Path, threads: int, chunk: int) -> dict:
    import numpy as np
    import torch

    # As `evaluate tokenbench` scores a pair on CPU: torch single-threaded, the two files decoding in
    # background threads. With --threads > 1 frames are also spread over that many threads (not the default).
    torch.set_num_threads(1)
    pool = None
    if threads > 1:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(threads)
    if mode == "metric":
        from cosmos_nemo.eval.metrics import PairAccumulator

        v0, v1 = _decode_all(gt), _decode_all(gen)
        t, c = time.perf_counter(), time.process_time()
        acc = PairAccumulator(pool=pool)
        for s in range(0, len(v0), chunk):
            acc.update(v0[s : s + chunk], v1[s : s + chunk])
        ours_s, ours_cpu = time.perf_counter() - t, time.process_time() - c
        t, c = time.perf_counter(), time.process_time()
        ref_psnr, ref_ssim = _skimage_loop(v0, v1)
        peer_s, peer_cpu = time.perf_counter() - t, time.process_time() - c
        return {"ours_s": ours_s, "peer_s": peer_s, "ours_cpu": ours_cpu, "peer_cpu": peer_cpu, "frames": len(v0),
                "psnr": acc.psnr, "ssim": acc.ssim, "ref_psnr": ref_psnr, "ref_ssim": ref_ssim}
    if mode == "ref_e2e":
        from skimage.metrics import structural_similarity

        t, c = time.perf_counter(), time.process_time()
        v0 = _decode_all(gt).astype(np.float32)
        v1 = _decode_all(gen).astype(np.float32)
        mse = ((v0 - v1) ** 2).mean()
        psnr = float(20 * np.log10(255.0 / (np.sqrt(mse) + np.finfo(np.float32).eps)))
        ssim = float(np.mean([structural_similarity(a, b, data_range=255.0, channel_axis=-1) for a, b in zip(v0, v1)]))
        return {"seconds": time.perf_counter() - t, "cpu": time.process_time() - c, "psnr": psnr, "ssim": ssim,
                "peak_rss_mb": _peak_rss_mb()}
    if mode == "ours_e2e":
        from cosmos_nemo.eval.tokenbench import TokenBenchConfig, _Models, evaluate_pair

        cfg = TokenBenchConfig(gtpath=gt.parent, targetpath=gen.parent, chunk_size=chunk, progress=False)
        t, c = time.perf_counter(), time.process_time()
        r = evaluate_pair(gt.name, gt, gen, cfg, _Models(), None, frame_pool=pool)
        return {"seconds": time.perf_counter() - t, "cpu": time.process_time() - c, "psnr": r.values["psnr"],
                "ssim": r.values["ssim"], "peak_rss_mb": _peak_rss_mb()}
    raise ValueError(mode)


def _spawn(mode: str, args, gt: Path, gen: Path) -> dict:
    cmd = [sys.executable, __file__, "--_child", mode, "--_gt", str(gt), "--_gen", str(gen),
           "--threads", str(args.threads), "--chunk", str(args.chunk)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="48 frames of 640x360 instead of 300 frames of 1280x720")
    p.add_argument("--frames", type=int, default=None, help="override the number of frames")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "cosmos_nemo_bench_tokenbench",
                   help="where the synthetic pair is made and cached")
    p.add_argument("--threads", type=int, default=1,
                   help="frame threads for ours (default 1, as the command; >1 is for experiments)")
    p.add_argument("--chunk", type=int, default=16, help="frames per chunk for ours")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    p.add_argument("--_gt", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--_gen", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._child:
        print(json.dumps(_child(args._child, args._gt, args._gen, args.threads, args.chunk)))
        return

    frames, height, width = (48, 360, 640) if args.small else (300, 720, 1280)
    frames = args.frames or frames
    args.workdir.mkdir(parents=True, exist_ok=True)
    gt, gen = _make_pair(args.workdir, frames, height, width)
    print(f"pair: {frames} frames {width}x{height}; cpu cores {os.cpu_count()}, frame threads {args.threads}", flush=True)

    metric = _spawn("metric", args, gt, gen)
    print(f"metric part: ours {metric['ours_s']:.2f} s, skimage+numpy loop {metric['peer_s']:.2f} s "
          f"(load {os.getloadavg()[0]:.1f})", flush=True)
    ours = _spawn("ours_e2e", args, gt, gen)
    print(f"end to end ours: {ours['seconds']:.2f} s, peak RSS {ours['peak_rss_mb']:.0f} MB", flush=True)
    ref = _spawn("ref_e2e", args, gt, gen)
    print(f"end to end reference method: {ref['seconds']:.2f} s, peak RSS {ref['peak_rss_mb']:.0f} MB", flush=True)

    print()
    print(f"{'measure':<44}{'ours':>10}{'peer':>10}{'ratio':>9}{'target':>9}")
    rows = [
        ("metric part vs skimage+NumPy loop, wall s", metric["ours_s"], metric["peer_s"], metric["peer_s"] / metric["ours_s"], ">= 3x"),
        ("end to end vs reference method, wall s", ours["seconds"], ref["seconds"], ref["seconds"] / ours["seconds"], ">= 3x"),
        ("peak RSS vs reference method, MB", ours["peak_rss_mb"], ref["peak_rss_mb"], ours["peak_rss_mb"] / ref["peak_rss_mb"], "<= 0.25"),
        # CPU seconds (all threads) do not depend on how busy the machine is; wall time on shared cores does.
        ("metric part, CPU s", metric["ours_cpu"], metric["peer_cpu"], metric["peer_cpu"] / metric["ours_cpu"], "info"),
        ("end to end, CPU s", ours["cpu"], ref["cpu"], ref["cpu"] / ours["cpu"], "info"),
    ]
    for name, a, b, r, target in rows:
        print(f"{name:<44}{a:>10.2f}{b:>10.2f}{r:>9.3f}{target:>9}")
    load = os.getloadavg()
    print(f"load average during the run (1/5/15 min): {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores")
    print()
    print(f"agreement: |dPSNR| metric {abs(metric['psnr'] - metric['ref_psnr']):.2e} dB, e2e {abs(ours['psnr'] - ref['psnr']):.2e} dB; "
          f"|dSSIM| metric {abs(metric['ssim'] - metric['ref_ssim']):.2e}, e2e {abs(ours['ssim'] - ref['ssim']):.2e}")
    print(f"values: PSNR {ours['psnr']:.4f} dB, SSIM {ours['ssim']:.6f}")


if __name__ == "__main__":
    main()
