"""TokenBench evaluation of a folder of generated videos against a folder of reference videos.

`run_tokenbench(config)` pairs the files, scores each pair while streaming its frames (see `metrics.py`,
`lpips.py`, `fvd.py` for the exact definitions), and writes into the generated folder:

* `psnr.json`, `ssim.json` (and `lpips.json`): the NeMo reference script's files, a JSON list of
  `[name, value]`;
* `tokenbench.json`: per-video values of every metric, means, a per-subset breakdown by filename prefix,
  every skipped file or pair with its reason, metrics refused and why, and the settings used;
* `tokenbench_worst.png`: the lowest-PSNR pairs at their worst frame, reference | generated | difference.

Every output is written under a temporary name and renamed when complete; a NaN or infinity never reaches
a file (a pair whose value is not finite is reported and excluded).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import signal
import tempfile
import threading
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

# torch is imported only where LPIPS, FVD or a non-CPU device need it (eval/lpips.py, eval/fvd.py): PSNR and
# SSIM on CPU are NumPy, so the command starts without torch's ~1.5 s import.
from cosmos_nemo.eval.contact_sheet import DIFF_GAIN, WorstFrame, worst_frame, write_contact_sheet
from cosmos_nemo.eval.metrics import FrameTooSmallError, PairAccumulator, check_frame_size
from cosmos_nemo.eval.sources import Preprocess, pair_videos, prefetch, subset_of, video_chunks
from cosmos_nemo.io.atomic import atomic_write_text
from cosmos_nemo.io.video import VideoDecodeError, list_videos

METRICS = ("psnr", "ssim", "lpips", "fvd")


@dataclass
class TokenBenchConfig:
    gtpath: Path
    targetpath: Path
    recursive: bool = False
    ext: str = "mp4"
    width: int | None = None
    num_frames: int | None = None
    reencode: bool = False
    metrics: tuple[str, ...] = ("psnr", "ssim")
    lpips_weights: list[Path] = field(default_factory=list)
    fvd_weights: Path | None = None
    workers: int = 1  # pairs scored in parallel (worker processes when > 1)
    chunk_size: int = 16
    device: str = "cpu"
    lpips_batch: int = 4
    contact_sheet: int = 8  # rows of worst pairs in tokenbench_worst.png; 0 writes none
    max_skipped: int = 0  # unscored pairs (and unmatched files) the command accepts before failing
    progress: bool = True

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(width=self.width, num_frames=self.num_frames, reencode=self.reencode)


class PairError(Exception):
    """A pair that cannot be scored; it is reported and excluded."""


class NoResultsError(RuntimeError):
    """Nothing could be scored."""


@dataclass
class PairResult:
    name: str
    frames: int
    height: int
    width: int
    values: dict[str, float]
    fvd_features: tuple[torch.Tensor, torch.Tensor] | None = None
    worst: WorstFrame | None = None


@dataclass
class _Models:
    lpips: object | None = None
    i3d: object | None = None


def _lockstep(ref_chunks, gen_chunks):
    """Yield aligned (reference, generated) frame chunks; raise PairError on size or length mismatch."""
    ref_it, gen_it = iter(ref_chunks), iter(gen_chunks)
    ref_buf = gen_buf = None
    n_ref = n_gen = 0
    while True:
        if ref_buf is None or len(ref_buf) == 0:
            ref_buf = next(ref_it, None)
            n_ref += 0 if ref_buf is None else len(ref_buf)
        if gen_buf is None or len(gen_buf) == 0:
            gen_buf = next(gen_it, None)
            n_gen += 0 if gen_buf is None else len(gen_buf)
        if ref_buf is None and gen_buf is None:
            return
        if ref_buf is None or gen_buf is None:
            # One side ended first: count the rest of the other so the report gives both lengths.
            n_ref += sum(len(c) for c in ref_it) if ref_buf is not None else 0
            n_gen += sum(len(c) for c in gen_it) if gen_buf is not None else 0
            raise PairError(f"frame counts differ: reference {n_ref} frames, generated {n_gen} frames")
        if ref_buf.shape[1:] != gen_buf.shape[1:]:
            (h0, w0), (h1, w1) = ref_buf.shape[1:3], gen_buf.shape[1:3]
            raise PairError(f"frame sizes differ: reference {w0}x{h0}, generated {w1}x{h1}")
        n = min(len(ref_buf), len(gen_buf))
        yield ref_buf[:n], gen_buf[:n]
        ref_buf, gen_buf = ref_buf[n:], gen_buf[n:]


def evaluate_pair(name: str, ref: Path, gen: Path, cfg: TokenBenchConfig, models: _Models, workdir: Path | None,
                  frame_pool: Executor | None = None) -> PairResult:
    """Score one pair, streaming both files chunk by chunk (frames scored on `frame_pool` if given)."""
    pre = cfg.preprocess
    acc = PairAccumulator(device=cfg.device, with_ssim="ssim" in cfg.metrics, pool=frame_pool)
    lpips_sum, fvd_ref, fvd_gen = 0.0, [], []
    fvd_frames = 0
    shape = None
    worst: WorstFrame | None = None
    ref_src = prefetch(video_chunks(ref, pre, cfg.chunk_size, workdir))
    gen_src = prefetch(video_chunks(gen, pre, cfg.chunk_size, workdir))
    try:
        for a, b in _lockstep(ref_src, gen_src):
            if shape is None:
                shape = a.shape[1:3]
                if "ssim" in cfg.metrics:
                    check_frame_size(*shape)
            if "psnr" in cfg.metrics or "ssim" in cfg.metrics:
                scores = acc.update(a, b)
                i = int(np.argmax(scores.sse))
                if cfg.contact_sheet > 0 and (worst is None or scores.sse[i] > worst.sse):
                    worst = worst_frame(a[i], b[i], acc.frames - len(a) + i, int(scores.sse[i]))
            else:
                acc.frames += len(a)
            if models.lpips is not None:
                from cosmos_nemo.eval.lpips import lpips_per_frame

                lpips_sum += float(lpips_per_frame(models.lpips, a, b, cfg.lpips_batch).sum())
            if models.i3d is not None:
                import torch

                from cosmos_nemo.eval.fvd import FVD_MAX_FRAMES, i3d_preprocess

                if fvd_frames < FVD_MAX_FRAMES:
                    take = min(len(a), FVD_MAX_FRAMES - fvd_frames)
                    fvd_ref.append(i3d_preprocess(torch.from_numpy(a[:take]), cfg.device))
                    fvd_gen.append(i3d_preprocess(torch.from_numpy(b[:take]), cfg.device))
                    fvd_frames += take
    finally:
        ref_src.close()
        gen_src.close()
    if shape is None:
        raise PairError("no frames to compare")
    values: dict[str, float] = {}
    if "psnr" in cfg.metrics:
        values["psnr"] = acc.psnr
    if "ssim" in cfg.metrics:
        values["ssim"] = acc.ssim
    if models.lpips is not None:
        values["lpips"] = lpips_sum / acc.frames
    feats = None
    if models.i3d is not None:
        import torch

        from cosmos_nemo.eval.fvd import i3d_features

        try:
            feats = (i3d_features(models.i3d, torch.cat(fvd_ref, dim=1)), i3d_features(models.i3d, torch.cat(fvd_gen, dim=1)))
        except RuntimeError as e:  # e.g. a clip shorter than the I3D's temporal receptive field
            raise PairError(f"the I3D network failed on this pair ({acc.frames} frames): {e}") from e
        if not all(torch.isfinite(f).all() for f in feats):
            raise PairError("the I3D features are not finite")
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if bad:
        raise PairError(f"non-finite {', '.join(bad)}")
    return PairResult(name, acc.frames, int(shape[0]), int(shape[1]), values, feats, worst)


def _load_models(cfg: TokenBenchConfig) -> _Models:
    models = _Models()
    if "lpips" in cfg.metrics:
        from cosmos_nemo.eval.lpips import load_lpips

        models.lpips = load_lpips(cfg.lpips_weights, cfg.device)
    if "fvd" in cfg.metrics:
        from cosmos_nemo.eval.fvd import load_i3d

        models.i3d = load_i3d(cfg.fvd_weights, cfg.device)
    return models


def check_metric_weights(cfg: TokenBenchConfig) -> dict[str, str]:
    """Metrics that cannot run, with the reason (the file to provide)."""
    refused = {}
    if "lpips" in cfg.metrics and not cfg.lpips_weights:
        from cosmos_nemo.eval.lpips import HELP_WEIGHTS

        refused["lpips"] = f"no --lpips-weights given; provide {HELP_WEIGHTS}"
    if "fvd" in cfg.metrics and cfg.fvd_weights is None:
        from cosmos_nemo.eval.fvd import I3D_FILE

        refused["fvd"] = f"no --fvd-weights given; provide the StyleGAN-V I3D TorchScript file {I3D_FILE}"
    return refused


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _atomic_write_json(path: Path, obj) -> None:
    # allow_nan=False: a NaN reaching a report is a bug, and must fail loudly rather than be written.
    atomic_write_text(path, json.dumps(obj, indent=None if isinstance(obj, list) else 2, allow_nan=False))


def _uses_torch(cfg: TokenBenchConfig) -> bool:
    """Whether scoring runs torch: LPIPS/FVD networks, or the metrics on a non-CPU device."""
    from cosmos_nemo.eval.metrics import _is_cpu

    return "lpips" in cfg.metrics or "fvd" in cfg.metrics or not _is_cpu(cfg.device)


class _single_threaded_torch:
    """On CPU, run torch ops single-threaded: its intra-op threads spin-wait on each other and slow down
    many-fold when the cores are shared; our parallelism is over pairs instead. A no-op (and no torch
    import) when scoring uses no torch."""

    def __init__(self, cfg: TokenBenchConfig):
        from cosmos_nemo.eval.metrics import _is_cpu

        self.active = _uses_torch(cfg) and _is_cpu(cfg.device)

    def __enter__(self):
        if self.active:
            import torch

            self.before = torch.get_num_threads()
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        if self.active:
            import torch

            torch.set_num_threads(self.before)


def _in_process(name, ref, gen, cfg, models, workdir) -> PairResult:
    with _single_threaded_torch(cfg):
        return evaluate_pair(name, ref, gen, cfg, models, workdir)


_WORKER_MODELS: _Models | None = None


def _worker_init(cfg: TokenBenchConfig) -> None:
    global _WORKER_MODELS
    # Ctrl-C reaches the whole process group; the parent stops the workers, so they neither react nor print
    # (SIGINT is also blocked in them from the start: `_start_workers`).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if _single_threaded_torch(cfg).active:
        import torch

        torch.set_num_threads(1)
    _WORKER_MODELS = _load_models(cfg)


def _worker_pair(name, ref, gen, cfg, workdir) -> PairResult:
    return evaluate_pair(name, ref, gen, cfg, _WORKER_MODELS, workdir)


def summarise(items: list[str], limit: int = 5) -> str:
    """`a; b; c` for up to `limit` items, then `; and N more`."""
    head = "; ".join(items[:limit])
    return head + (f"; and {len(items) - limit} more" if len(items) > limit else "")


def unsearched_subfolders(root: Path, ext: str) -> int:
    """How many `*.ext` files lie in subfolders of `root` (which pairing without --recursive does not search)."""
    suffix = "." + ext.lstrip(".").lower()
    return sum(1 for p in list_videos(root, True, (suffix,)) if len(p.relative_to(root).parts) > 1)


def _subfolder_warnings(cfg: TokenBenchConfig) -> list[str]:
    if cfg.recursive:
        return []
    out = []
    for root, flag in ((cfg.gtpath, "--gtpath"), (cfg.targetpath, "--targetpath")):
        n = unsearched_subfolders(root, cfg.ext)
        if n:
            out.append(f"subfolders of {flag} {root} hold {n} *.{cfg.ext.lstrip('.')} file{'s' if n != 1 else ''} that "
                       "were not searched (only files directly in the folder are paired; add --recursive to pair the "
                       "whole tree by relative path)")
    return out


def skip_policy_error(report: dict, max_skipped: int) -> str | None:
    """The message when more than `max_skipped` pairs (or unmatched files) were not scored, else None."""
    skipped = report["skipped"]
    if len(skipped) <= max_skipped:
        return None
    total = len(skipped) + len(report["videos"])
    reasons = summarise([f"{s['name']} ({s['reason']})" for s in skipped])
    return (f"{len(skipped)} of {total} pairs were not scored, more than --max-skipped {max_skipped} allows: {reasons}. "
            f"The report lists every skipped pair with its reason; give --max-skipped {len(skipped)} to accept them")


def _by_size(pairs: list[tuple[str, Path, Path]]) -> list[tuple[str, Path, Path]]:
    """Largest pairs first, so that parallel workers finish together (longest job first)."""
    def size(pair) -> int:
        try:
            return pair[1].stat().st_size + pair[2].stat().st_size
        except OSError:
            return 0
    return sorted(pairs, key=lambda pair: (-size(pair), pair[0]))


def _start_workers(pool: ProcessPoolExecutor, n: int) -> None:
    """Start the pool's `n` processes now, so that a Ctrl-C can neither reach a worker that is still starting
    (it would print a traceback before ignoring SIGINT) nor cut a start short (the half-started worker would
    print one too):

    * SIGINT is blocked in this thread while the workers start: they inherit the blocked signal through fork
      and exec, so it never reaches them (`_stop_pool` ends them);
    * a Ctrl-C in the meantime (delivered to another thread, or pending here) is held back and raised as
      KeyboardInterrupt once every worker has started.

    Submitting a no-op per worker starts them (a pool starts its processes on submit)."""
    block = hasattr(signal, "pthread_sigmask")
    held: list[int] = []
    handler = None
    if threading.current_thread() is threading.main_thread():
        handler = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if block else None
    try:
        for _ in range(n):
            pool.submit(int)
    finally:
        if block:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if handler is not None:
            signal.signal(signal.SIGINT, handler)
    if held:
        raise KeyboardInterrupt


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the worker processes now (on Ctrl-C or an error), leaving none behind."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    for proc in processes:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)


def run_tokenbench(cfg: TokenBenchConfig) -> dict:
    """Evaluate, write the outputs into `cfg.targetpath`, and return the `tokenbench.json` content.

    Ctrl-C (KeyboardInterrupt) stops the worker processes before it propagates; nothing is written then.
    """
    unknown = [m for m in cfg.metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {', '.join(METRICS)}")
    refused = check_metric_weights(cfg)
    if refused:
        raise ValueError("; ".join(f"{k}: {v}" for k, v in refused.items()))
    pairing = pair_videos(cfg.gtpath, cfg.targetpath, cfg.ext, cfg.recursive)
    warnings = _subfolder_warnings(cfg)
    skipped = [{"name": n, "reason": "only in the reference folder (--gtpath)"} for n in pairing.only_reference]
    skipped += [{"name": n, "reason": "only in the generated folder (--targetpath)"} for n in pairing.only_generated]
    if not pairing.pairs:
        raise NoResultsError(
            f"no pairs: no *.{cfg.ext} file has the same relative path under {cfg.gtpath} and {cfg.targetpath}"
            + ("".join(f"; {w}" for w in warnings) if warnings else
               "" if cfg.recursive else " (searched the top level of each folder only)")
        )
    results: dict[str, PairResult] = {}
    workers = min(max(1, cfg.workers), len(pairing.pairs))
    progress = None
    if cfg.progress:
        from tqdm import tqdm

        progress = tqdm(total=len(pairing.pairs), desc="tokenbench pairs", unit="pair")

    def record(name: str, get) -> None:
        try:
            results[name] = get()
        except (PairError, VideoDecodeError, FrameTooSmallError) as e:
            skipped.append({"name": name, "reason": str(e)})
        if progress is not None:
            progress.update(1)

    try:
        with tempfile.TemporaryDirectory(prefix="tokenbench_") as tmp:
            workdir = Path(tmp)
            # Pairs are taken largest first from one shared list by this thread, which scores them here (its two
            # files decode in background threads meanwhile; torch, when LPIPS/FVD use it, is single-threaded on
            # CPU: `_single_threaded_torch`), and with --workers N > 1 also by N - 1 feeder threads, each
            # handing one pair at a time to a worker process. Processes rather than threads: threads would
            # share one GIL, and a preempted GIL holder stalls all of them on a busy machine. This process
            # scoring too saves one worker's start-up. Ctrl-C lands in this thread: `_stop_pool` then ends
            # the workers (which ignore SIGINT), so none is orphaned or prints.
            models = _load_models(cfg)  # also turns a bad weights file into a clear error before any worker starts
            todo = iter(_by_size(pairing.pairs))
            lock = threading.Lock()
            stopped = threading.Event()
            feeder_errors: list[BaseException] = []

            def take():
                with lock:
                    return None if stopped.is_set() else next(todo, None)

            pool = None
            feeders: list[threading.Thread] = []
            if workers > 1:
                pool = ProcessPoolExecutor(workers - 1, mp_context=multiprocessing.get_context("spawn"),
                                           initializer=_worker_init, initargs=(cfg,))

                def feed() -> None:
                    try:
                        while (pair := take()) is not None:
                            fut = pool.submit(_worker_pair, pair[0], pair[1], pair[2], cfg, workdir)
                            record(pair[0], fut.result)
                    except BaseException as e:  # a broken pool, or futures cancelled on the way out
                        if not stopped.is_set():
                            feeder_errors.append(e)
                            stopped.set()

                feeders = [threading.Thread(target=feed, daemon=True, name=f"tokenbench-feed-{k}")
                           for k in range(workers - 1)]
            try:
                if pool is not None:
                    _start_workers(pool, workers - 1)
                for t in feeders:
                    t.start()
                while (pair := take()) is not None:
                    name, ref, gen = pair
                    record(name, lambda: _in_process(name, ref, gen, cfg, models, workdir))
                for t in feeders:
                    t.join()
            except BaseException:
                stopped.set()
                if pool is not None:
                    _stop_pool(pool)
                raise
            if pool is not None:
                pool.shutdown(wait=True)
            if feeder_errors:
                raise feeder_errors[0]
    finally:
        if progress is not None:
            progress.close()
    if not results:
        reasons = summarise([f"{s['name']}: {s['reason']}" for s in sorted(skipped, key=lambda s: s["name"])])
        raise NoResultsError(f"no pair could be scored ({reasons})")
    ordered = [results[n] for n in sorted(results)]
    report = _build_report(cfg, ordered, skipped)
    report["warnings"] = warnings
    report["skip_check"] = {"max_skipped": cfg.max_skipped, "skipped": len(skipped),
                            "passed": skip_policy_error(report, cfg.max_skipped) is None}
    sheet = _write_worst_sheet(cfg, ordered)
    if sheet is not None:
        report["contact_sheet"] = sheet.name
    _write_outputs(cfg.targetpath, report)
    return report


def _write_worst_sheet(cfg: TokenBenchConfig, results: list[PairResult]) -> Path | None:
    """`tokenbench_worst.png`: the lowest-PSNR pairs, each at its worst frame."""
    scored = [r for r in results if r.worst is not None]
    if cfg.contact_sheet <= 0 or not scored:
        return None
    key = "psnr" if "psnr" in cfg.metrics else "ssim"
    scored.sort(key=lambda r: r.values[key])
    rows = []
    for r in scored[: cfg.contact_sheet]:
        vals = "  ".join(f"{m.upper()} {r.values[m]:.4f}" for m in ("psnr", "ssim", "lpips") if m in r.values)
        rows.append((f"{r.name}  frame {r.worst.index}  {vals}   (reference | generated | |diff| x{DIFF_GAIN})", r.worst))
    return write_contact_sheet(cfg.targetpath / "tokenbench_worst.png", rows)


def _build_report(cfg: TokenBenchConfig, results: list[PairResult], skipped: list[dict]) -> dict:
    metric_names = [m for m in cfg.metrics if m != "fvd"]
    means = {m: _mean([r.values[m] for r in results]) for m in metric_names}
    notes = {}
    if "fvd" in cfg.metrics:
        from cosmos_nemo.eval.fvd import FVDAccumulator

        fvd = FVDAccumulator()
        for r in results:
            fvd.add_pair(*r.fvd_features)
        if fvd.real.count >= 2:
            value = fvd.compute()
            if math.isfinite(value):
                means["fvd"] = value
            else:
                notes["fvd"] = "the Fréchet distance is not finite"
        else:
            notes["fvd"] = f"FVD needs at least 2 scored pairs, got {fvd.real.count}"
    subsets: dict[str, dict] = {}
    for prefix in sorted({subset_of(r.name) for r in results}):
        members = [r for r in results if subset_of(r.name) == prefix]
        subsets[prefix] = {"count": len(members), **{m: _mean([r.values[m] for r in members]) for m in metric_names}}
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items() if k != "progress"}
    settings["lpips_weights"] = [str(p) for p in cfg.lpips_weights]
    settings["fvd_weights"] = str(cfg.fvd_weights) if cfg.fvd_weights else None
    settings["metrics"] = list(cfg.metrics)
    settings["frames"] = (
        "as decoded" if not cfg.preprocess.active else
        "reference token_bench.py preprocessing" + (" with mp4 re-encode" if cfg.reencode else " without re-encode")
    )
    return {
        "videos": [{"name": r.name, "frames": r.frames, "height": r.height, "width": r.width, **r.values} for r in results],
        "means": means,
        "subsets": subsets,
        "skipped": sorted(skipped, key=lambda s: s["name"]),
        "notes": notes,
        "settings": settings,
    }


def _write_outputs(target: Path, report: dict) -> None:
    for metric in ("psnr", "ssim", "lpips"):
        if metric in report["means"]:
            _atomic_write_json(target / f"{metric}.json", [[v["name"], v[metric]] for v in report["videos"]])
    _atomic_write_json(target / "tokenbench.json", report)


def format_table(report: dict) -> str:
    """The printed summary: one row per subset and an overall row."""
    metrics = [m for m in ("psnr", "ssim", "lpips") if m in report["means"]]
    head = f"{'subset':<16}{'videos':>7}" + "".join(f"{m.upper():>10}" for m in metrics)
    lines = [head, "-" * len(head)]

    def row(label, count, vals):
        cells = "".join(f"{vals[m]:>10.4f}" if m != "psnr" else f"{vals[m]:>10.3f}" for m in metrics)
        return f"{label:<16}{count:>7}" + cells

    for prefix, sub in report["subsets"].items():
        lines.append(row(prefix, sub["count"], sub))
    lines.append("-" * len(head))
    lines.append(row("all", len(report["videos"]), report["means"]))
    if "fvd" in report["means"]:
        lines.append(f"FVD (I3D, {len(report['videos'])} pairs): {report['means']['fvd']:.3f}")
    for metric, note in report["notes"].items():
        lines.append(f"{metric.upper()}: not computed, {note}")
    for warning in report.get("warnings", []):
        lines.append(f"note: {warning}")
    if report["skipped"]:
        lines.append(f"skipped {len(report['skipped'])}:")
        lines += [f"  {s['name']}: {s['reason']}" for s in report["skipped"]]
    return "\n".join(lines)
