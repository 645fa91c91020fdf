"""`cosmos-nemo evaluate tokenbench`: TokenBench PSNR/SSIM (and LPIPS/FVD) between two video folders."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

_DESCRIPTION = """\
Score generated videos against reference videos with TokenBench's metrics, exactly as NVIDIA's scripts
define them: PSNR per video from one global MSE, SSIM per frame with scikit-image's defaults (7x7 uniform
window, sample covariance, data range 255, channel-averaged) averaged over frames, and optionally LPIPS
(VGG) and FVD (StyleGAN-V I3D). Frames are decoded with PyAV as uint8 RGB and streamed in chunks.

Files are paired by their path relative to --gtpath and --targetpath (only files directly in each folder
unless --recursive; videos left in subfolders are pointed out). Unmatched files, undecodable or truncated
files, and pairs whose frame counts or sizes differ are reported and skipped; by default any such pair makes
the command fail (exit status 1) after writing the report, and --max-skipped N accepts up to N of them.
Outputs go to --targetpath:
psnr.json and ssim.json (as NVIDIA's NeMo token_bench.py writes them: [[name, value], ...]), lpips.json
with LPIPS, and tokenbench.json with per-video values, means, a per-subset breakdown by filename prefix,
skipped files with reasons, and the settings used. tokenbench_worst.png shows the lowest-PSNR pairs at
their worst frame (reference | generated | difference).

Mapping from cosmos1/.../tokenizer/token_bench.py: --gtpath, --targetpath, --ext, --recursive, --width,
--num_frames and --device mean the same. That script always preprocesses (default --width 320
--num_frames 17) and re-encodes both sides to mp4 before scoring; here frames are compared as decoded
unless --width/--num_frames are given, and the re-encode happens only with --reencode.
"""


def _metrics(text: str) -> tuple[str, ...]:
    from cosmos_nemo.eval.tokenbench import METRICS

    names = tuple(m.strip().lower() for m in text.split(",") if m.strip())
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown metric(s) {bad}; choose from {','.join(METRICS)}")
    return names


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def _paths(text: str) -> list[Path]:
    return [Path(p) for p in text.split(",") if p]


def register(subparsers) -> None:
    evaluate = subparsers.add_parser("evaluate", help="evaluate generated videos (TokenBench) or a Reasoner (VideoPhy-2)",
                                     description="Evaluate generated videos against references.")
    sub = evaluate.add_subparsers(dest="evaluate_command", metavar="BENCHMARK")
    evaluate.set_defaults(func=lambda args: (evaluate.print_help(), 2)[1])
    p = sub.add_parser("tokenbench", help="PSNR/SSIM (and LPIPS/FVD) exactly as TokenBench computes them",
                       description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gtpath", required=True, type=Path, help="folder of reference (ground-truth) videos")
    p.add_argument("--targetpath", required=True, type=Path,
                   help="folder of generated videos; the reports are written here")
    p.add_argument("--recursive", action="store_true",
                   help="pair files in the whole tree by relative path (default: only files directly in each folder)")
    p.add_argument("--ext", default="mp4", help="video file extension to pair (default: mp4)")
    p.add_argument("--width", type=_positive, default=None,
                   help="reference preprocessing: resize the SHORT side to this many pixels with Lanczos, as "
                   "token_bench.py's --width does (its name, though it is the short side). Default: no resize")
    p.add_argument("--num_frames", "--num-frames", dest="num_frames", type=_positive, default=None,
                   help="reference preprocessing: clip each video to 10 s (at least 300 frames), then keep the "
                   "first N frames. Default: all frames")
    p.add_argument("--reencode", action="store_true",
                   help="with --width/--num_frames, re-encode both preprocessed sides to H.264 mp4 before scoring "
                   "(libx264, qp 20 up to 640x480 else 28, as mediapy.write_video does), which the reference "
                   "token_bench.py always does. Lossy for both sides. Off by default")
    p.add_argument("--metrics", type=_metrics, default=("psnr", "ssim"),
                   help="comma-separated metrics from psnr,ssim,lpips,fvd (default: psnr,ssim). lpips needs "
                   "--lpips-weights and fvd needs --fvd-weights")
    p.add_argument("--lpips-weights", "--lpips_weights", dest="lpips_weights", type=_paths, default=[],
                   help="local LPIPS-VGG weights: a state_dict of lpips.LPIPS(net='vgg') (.safetensors or .pth), "
                   "or 'vgg16-397923af.pth,vgg.pth' (torchvision VGG16 + lpips weights/v0.1/vgg.pth). "
                   "Nothing is downloaded")
    p.add_argument("--fvd-weights", "--fvd_weights", dest="fvd_weights", type=Path, default=None,
                   help="local StyleGAN-V I3D TorchScript file i3d_torchscript.pt (HF LanguageBind/"
                   "Open-Sora-Plan-v1.0.0, opensora/eval/fvd/styleganv/). FVD needs at least 2 pairs")
    p.add_argument("--workers", type=_positive, default=_default_workers(),
                   help="pairs scored in parallel: by this process and N-1 worker processes, each pair's two files "
                   "decoding in background threads meanwhile (on CPU, PSNR/SSIM are NumPy; torch, for LPIPS/FVD, "
                   "runs single-threaded). Default: half the CPU cores, at most 4 "
                   f"(here {_default_workers()})")
    p.add_argument("--chunk-size", "--chunk_size", dest="chunk_size", type=_positive, default=16,
                   help="frames decoded and scored at a time per file (default: 16); memory grows with it")
    p.add_argument("--device", default="cpu",
                   help="torch device for the metrics, e.g. cpu or cuda (default: cpu). Decoding is always on CPU")
    p.add_argument("--lpips-batch", "--lpips_batch", dest="lpips_batch", type=_positive, default=4,
                   help="frames per LPIPS forward pass (default: 4)")
    p.add_argument("--max-skipped", "--max_skipped", dest="max_skipped", type=_non_negative, default=0,
                   help="how many pairs may go unscored (undecodable, truncated, mismatched frames or sizes, or a "
                   "file with no counterpart in the other folder) before the command fails. Default 0: any "
                   "unscored pair makes a non-zero exit with a message naming them; the report is written either "
                   "way and lists every skipped pair with its reason")
    p.add_argument("--contact-sheet", "--contact_sheet", dest="contact_sheet", type=int, default=8,
                   help="rows in tokenbench_worst.png: the N lowest-PSNR pairs at their worst frame, as "
                   "reference | generated | 4x difference (default: 8; 0 writes no sheet)")
    p.set_defaults(func=_run_tokenbench)
    _register_videophy2(sub)


def _register_videophy2(sub) -> None:
    from cosmos_nemo.eval.videophy2 import __doc__ as doc

    p = sub.add_parser("videophy2", help="a Reasoner's VideoPhy-2 scoring: accuracy and MAE on the 1-5 scale",
                       description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path,
                   help="a Reasoner run folder, one of its checkpoints/iter_* folders, or a `convert export-hf` folder")
    p.add_argument("--data", required=True, type=Path,
                   help="a VideoPhy-2 split folder (videophy2_val/ from `prepare videophy2`), or the root holding it")
    p.add_argument("--label", choices=("pc", "sa"), default=None,
                   help="the score to compare with: pc (physical commonsense) or sa (semantic adherence). Default: "
                   "the run's data.label (pc for an exported folder)")
    p.add_argument("--limit", type=_positive, default=None, help="score only the first N records")
    p.add_argument("--device", default=None, help="torch device (default: cuda when present, else cpu)")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="write the report (JSON: metrics, confusion, each record's answer, skipped records) here")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=_run_videophy2)


def _run_videophy2(args) -> int:
    import torch

    from cosmos_nemo.data.vlm_dataset import DataError
    from cosmos_nemo.eval.videophy2 import ScoringError, evaluate_videophy2, format_report, write_report

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        report = evaluate_videophy2(args.model, args.data, label=args.label, limit=args.limit, device=device,
                                    progress=args.progress)
    except (ScoringError, DataError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.output is not None:
        print(f"wrote {write_report(report, args.output)}")
    return 0 if report.count else 1


def _run_tokenbench(args) -> int:
    from cosmos_nemo.eval.tokenbench import (NoResultsError, TokenBenchConfig, format_table, run_tokenbench,
                                             skip_policy_error)

    if args.reencode and args.width is None and args.num_frames is None:
        print("error: --reencode applies to the reference preprocessing; give --width and/or --num_frames too",
              file=sys.stderr)
        return 2
    cfg = TokenBenchConfig(
        gtpath=args.gtpath, targetpath=args.targetpath, recursive=args.recursive, ext=args.ext,
        width=args.width, num_frames=args.num_frames, reencode=args.reencode, metrics=args.metrics,
        lpips_weights=args.lpips_weights, fvd_weights=args.fvd_weights, workers=args.workers,
        chunk_size=args.chunk_size, device=args.device, lpips_batch=args.lpips_batch,
        contact_sheet=args.contact_sheet, max_skipped=args.max_skipped,
    )
    try:
        report = run_tokenbench(cfg)
    except (NoResultsError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # The worker processes are already stopped (run_tokenbench); one line, no traceback.
        print("\ninterrupted: evaluate tokenbench stopped, no report written", file=sys.stderr)
        return 130
    print(format_table(report))
    print(f"wrote {args.targetpath / 'tokenbench.json'}")
    problem = skip_policy_error(report, args.max_skipped)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    return 0
