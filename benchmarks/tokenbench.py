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

`--set` measures the command itself instead: `cosmos-nemo evaluate tokenbench` run as a user runs it (a
fresh process, start-up included) on a set of 5 pairs of realistic footage synthesised here and encoded with
PyAV (a panning multi-octave textured scene, textured objects moving across it, lighting drift and sensor
noise, at 720x405, 640x360, 480x270, 704x396 and 720x405 in yuv444p/yuv420p; the reference side at crf 18,
the generated side blurred and at crf 30), against the reference method run the same way: a fresh Python
process that decodes each file with the ffmpeg command line (`-f rawvideo -pix_fmt rgb24`, as mediapy does;
imageio-ffmpeg's binary, else PyAV), converts to float32, PSNR from one global MSE and scikit-image SSIM per
frame. It also runs the command with --workers 2 and `cosmos-nemo --help`. Targets: >= 3x at 1 worker,
2 workers faster than 1, --help under 0.5 s. Each timing is the median of --repeat runs.

    python benchmarks/tokenbench.py            # 300 frames, 1280x720 (the reference method needs ~11 GB)
    python benchmarks/tokenbench.py --small    # 48 frames, 640x360
    python benchmarks/tokenbench.py --set      # the CLI end to end on 5 realistic pairs
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


# ------------------------------------------------------------------------------------------------------
# --set: the command end to end on realistic footage

# (name, height, width, frames, fps)
SET_PAIRS = (
    ("street_a.mp4", 405, 720, 49, 30),
    ("drive_b.mp4", 360, 640, 57, 24),
    ("hand_c.mp4", 270, 480, 61, 30),
    ("robot_d.mp4", 396, 704, 41, 25),
    ("walk_e.mp4", 405, 720, 33, 30),
)


def _value_noise(rng, h: int, w: int, octaves=((6, 1.0), (20, 0.6), (70, 0.35), (220, 0.2))):
    """Multi-octave smooth noise `[h, w]` (smoothstep-interpolated random lattices), a natural-image-like texture."""
    import numpy as np

    out = np.zeros((h, w), np.float32)
    for cells, amp in octaves:
        gh, gw = max(2, h * cells // max(h, w)), max(2, w * cells // max(h, w))
        g = rng.standard_normal((gh + 1, gw + 1)).astype(np.float32)
        yy = np.linspace(0, gh, h, dtype=np.float32, endpoint=False)
        xx = np.linspace(0, gw, w, dtype=np.float32, endpoint=False)
        y0, x0 = yy.astype(int), xx.astype(int)
        fy, fx = (yy - y0)[:, None], (xx - x0)[None, :]
        fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
        top = g[y0][:, x0] * (1 - fx) + g[y0][:, x0 + 1] * fx
        bottom = g[y0 + 1][:, x0] * (1 - fx) + g[y0 + 1][:, x0 + 1] * fx
        out += amp * (top * (1 - fy) + bottom * fy)
    return out


def realistic_frames(frames: int, height: int, width: int, seed: int):
    """uint8 `[frames, height, width, 3]`: a camera panning over a textured scene, textured objects moving
    across it, a slow lighting drift and sensor noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    pan = rng.uniform(1.5, 4.0, size=2) * rng.choice([-1, 1], size=2)
    ch, cw = height + int(abs(pan[0]) * frames) + 8, width + int(abs(pan[1]) * frames) + 8
    tint = rng.uniform(0.7, 1.2, size=3).astype(np.float32)
    scene = np.stack([_value_noise(rng, ch, cw) for _ in range(3)], -1)
    scene = 115 + 42 * (0.7 * scene.mean(-1, keepdims=True) + 0.3 * scene) * tint
    objects = []
    for _ in range(3):
        oh, ow = int(rng.uniform(0.15, 0.35) * height), int(rng.uniform(0.1, 0.3) * width)
        tex = 128 + 60 * np.stack([_value_noise(rng, oh, ow, ((4, 1.0), (30, 0.5))) for _ in range(3)], -1)
        pos = rng.uniform(0, 1, size=2) * (height - oh, width - ow)
        vel = rng.uniform(-6, 6, size=2)
        objects.append((tex, pos, vel))
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        oy = int(4 + (pan[0] * t if pan[0] > 0 else abs(pan[0]) * (frames - t)))
        ox = int(4 + (pan[1] * t if pan[1] > 0 else abs(pan[1]) * (frames - t)))
        f = scene[oy : oy + height, ox : ox + width].copy()
        for tex, pos, vel in objects:
            y, x = pos + vel * t
            y, x = int(y) % max(1, height - tex.shape[0]), int(x) % max(1, width - tex.shape[1])
            f[y : y + tex.shape[0], x : x + tex.shape[1]] = tex
        f *= 1 + 0.08 * np.sin(0.15 * t + seed)
        f += rng.normal(0, 3.0, size=f.shape).astype(np.float32)
        out[t] = np.clip(np.rint(f), 0, 255).astype(np.uint8)
    return out


def _blurred(frames):
    """A tokenizer-like loss of detail: a [1, 2, 1]/4 blur in each direction."""
    import numpy as np

    f = frames.astype(np.uint16)
    f[:, 1:-1] = (f[:, :-2] + 2 * f[:, 1:-1] + f[:, 2:] + 2) // 4
    f[:, :, 1:-1] = (f[:, :, :-2] + 2 * f[:, :, 1:-1] + f[:, :, 2:] + 2) // 4
    return f.astype(np.uint8)


def make_set(root: Path) -> tuple[Path, Path]:
    """The --set pairs under root/reference and root/generated (made once, then reused)."""
    from cosmos_nemo.io.video import write_mp4

    gt, gen = root / "reference", root / "generated"
    gt.mkdir(parents=True, exist_ok=True)
    gen.mkdir(parents=True, exist_ok=True)
    for i, (name, h, w, n, fps) in enumerate(SET_PAIRS):
        if (gt / name).exists() and (gen / name).exists():
            continue
        print(f"making {name}: {n} frames {w}x{h} ...", flush=True)
        frames = realistic_frames(n, h, w, seed=i)
        write_mp4(gt / name, frames, fps=fps, crf=18)
        write_mp4(gen / name, _blurred(frames), fps=fps, crf=30)
    return gt, gen


def _ffmpeg_exe() -> str | None:
    import shutil

    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception:
        return shutil.which("ffmpeg")


# The reference method, run as its own Python process (start-up and imports included, as for the command).
_REFERENCE_SCRIPT = r"""
import json, subprocess, sys, time
from pathlib import Path
import numpy as np
from skimage.metrics import structural_similarity

gt, gen, ffmpeg = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

def read_video(path):
    if ffmpeg:  # as mediapy.read_video: the ffmpeg CLI's rgb24 pipe
        import av
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            h, w = s.codec_context.height, s.codec_context.width
        raw = subprocess.run([ffmpeg, "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24",
                              "-fps_mode", "passthrough", "-"], check=True, capture_output=True).stdout
        return np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)
    import av
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])

psnr, ssim = {}, {}
for p in sorted(gt.glob("*.mp4")):
    v0 = read_video(p).astype(np.float32)
    v1 = read_video(gen / p.name).astype(np.float32)
    mse = np.mean((v0 - v1) ** 2)
    psnr[p.name] = float(20 * np.log10(255.0 / (np.sqrt(mse) + np.finfo(np.float32).eps)))
    ssim[p.name] = float(np.mean([structural_similarity(a, b, data_range=255.0, channel_axis=-1) for a, b in zip(v0, v1)]))
print(json.dumps({"psnr": psnr, "ssim": ssim}))
"""


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _timed(cmd: list[str], cpu: list[float] | None = None, env: dict | None = None, cwd: Path | None = None,
           ) -> tuple[float, str]:
    """Wall seconds and stdout of `cmd`; its CPU seconds (all its processes and threads) go to `cpu`."""
    t, c = time.perf_counter(), _children_cpu()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    seconds = time.perf_counter() - t
    if cpu is not None:
        cpu.append(_children_cpu() - c)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    return seconds, proc.stdout


def run_set(args) -> None:
    import statistics

    root = args.workdir / "set"
    gt, gen = make_set(root)
    ffmpeg = _ffmpeg_exe() or ""
    frames = sum(n for *_, n, _fps in SET_PAIRS)
    print(f"set: {len(SET_PAIRS)} pairs, {frames} frames, up to 720x405; cpu cores {os.cpu_count()}; "
          f"reference decode: {'ffmpeg CLI ' + ffmpeg if ffmpeg else 'PyAV'}", flush=True)
    cli = [sys.executable, "-m", "cosmos_nemo"]
    ours = cli + ["evaluate", "tokenbench", "--gtpath", str(gt), "--targetpath", str(gen), "--contact-sheet", "0"]
    runs: dict[str, list[float]] = {"help": [], "ours_1": [], "ours_2": [], "reference": []}
    before_env = None
    if args.before:  # another checkout of the package (e.g. `git archive OLD cosmos_nemo | tar -x -C DIR`)
        before_env = dict(os.environ, PYTHONPATH=str(args.before))
        runs.update({"before_help": [], "before_1": [], "before_2": []})
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    out_ref = out_ours = ""
    _timed(ours + ["--workers", "1"])  # warm the page cache and the bytecode caches once
    for _ in range(args.repeat):
        t, _out = _timed(cli + ["--help"], cpu["help"])
        runs["help"].append(t)
        t, out_ours = _timed(ours + ["--workers", "1"], cpu["ours_1"])
        runs["ours_1"].append(t)
        ours_report = json.loads((gen / "tokenbench.json").read_text())
        t, _out = _timed(ours + ["--workers", "2"], cpu["ours_2"])
        runs["ours_2"].append(t)
        t, out_ref = _timed([sys.executable, "-c", _REFERENCE_SCRIPT, str(gt), str(gen), ffmpeg], cpu["reference"])
        runs["reference"].append(t)
        if before_env is not None:
            # From a neutral folder: `python -m` puts the working directory first on sys.path.
            runs["before_help"].append(_timed(cli + ["--help"], cpu["before_help"], before_env, root)[0])
            for w in ("1", "2"):
                runs["before_" + w].append(_timed(ours + ["--workers", w], cpu["before_" + w], before_env, root)[0])
        print("  " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in runs.items()) + f" (load {os.getloadavg()[0]:.1f})",
              flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    mcpu = {k: statistics.median(v) for k, v in cpu.items()}
    ref = json.loads(out_ref.strip().splitlines()[-1])
    ours_vals = {v["name"]: v for v in ours_report["videos"]}
    d_psnr = max(abs(ours_vals[n]["psnr"] - ref["psnr"][n]) for n in ref["psnr"])
    d_ssim = max(abs(ours_vals[n]["ssim"] - ref["ssim"][n]) for n in ref["ssim"])
    print()
    print(f"{'measure (median of ' + str(args.repeat) + ')':<44}{'wall s':>8}{'ratio':>8}{'target':>9}{'CPU s':>8}{'ratio':>8}")
    print(f"{'reference method (ffmpeg + scikit-image)':<44}{med['reference']:>8.2f}{'':>8}{'':>9}{mcpu['reference']:>8.2f}")
    for k in ("ours_1", "ours_2"):
        label = f"evaluate tokenbench --workers {k[-1]}"
        print(f"{label:<44}{med[k]:>8.2f}{med['reference'] / med[k]:>8.2f}{'>= 3x' if k == 'ours_1' else '':>9}"
              f"{mcpu[k]:>8.2f}{mcpu['reference'] / mcpu[k]:>8.2f}")
    if before_env is not None:
        for k, label in (("before_1", "--before: --workers 1"), ("before_2", "--before: --workers 2"),
                         ("before_help", "--before: --help")):
            print(f"{label:<44}{med[k]:>8.2f}{med['reference'] / med[k]:>8.2f}{'':>9}{mcpu[k]:>8.2f}"
                  f"{mcpu['reference'] / mcpu[k]:>8.2f}")
    print(f"{'--workers 2 vs --workers 1':<44}{'':>8}{med['ours_1'] / med['ours_2']:>8.2f}{'> 1':>9}")
    print(f"{'cosmos-nemo --help':<44}{med['help']:>8.2f}{'':>8}{'< 0.5 s':>9}{mcpu['help']:>8.2f}")
    load = os.getloadavg()
    print(f"load average after the run (1/5/15 min): {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores")
    print(f"agreement with the reference method: max |dPSNR| {d_psnr:.2e} dB, max |dSSIM| {d_ssim:.2e}; "
          f"PSNR mean {ours_report['means']['psnr']:.3f} dB, SSIM mean {ours_report['means']['ssim']:.4f}")


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
    p.add_argument("--set", action="store_true",
                   help="time the `evaluate tokenbench` command end to end on 5 realistic pairs vs the reference method")
    p.add_argument("--repeat", type=int, default=3, help="--set: runs of each command (the median is reported)")
    p.add_argument("--before", type=Path, default=None,
                   help="--set: also time the command from this folder holding another version's cosmos_nemo package "
                        "(put first on PYTHONPATH), e.g. `git archive OLD cosmos_nemo | tar -x -C DIR`")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    p.add_argument("--_gt", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--_gen", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._child:
        print(json.dumps(_child(args._child, args._gt, args._gen, args.threads, args.chunk)))
        return
    if args.set:
        args.workdir.mkdir(parents=True, exist_ok=True)
        run_set(args)
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
