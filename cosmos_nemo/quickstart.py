"""`cosmos-nemo quickstart`: the whole post-training path on a CPU in minutes, with no network.

1. sample-data: simulated bouncing-ball videos with captions;
2. train-tokenizer: fit a tiny Cosmos causal video tokenizer (the real architecture) to them;
3. prepare ar-tokens: tokenize sliding windows into the AR token dataset;
4. train the tiny AR recipe with TP=2 over 2 processes (torchrun through nemo-run);
5. resume-check: run the same command for a few more steps; it continues from the last checkpoint;
6. generate continuations of held-out clips from their first latent frames, and decode them;
7. TokenBench PSNR/SSIM of the continuations (and of the tokenizer's reconstructions) against the clips;
8. print where everything is.

`--family diffusion` runs the diffusion path instead (quickstart_diffusion.py): a continuous tokenizer, latents
and text embeddings, a tiny DiT, Text2World and Video2World generations.

Every step is the production code path (the same recipe scales to 4B); only the sizes are small.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

TOKENIZER_COMPRESSION = (4, 8, 8)  # the tiny tokenizer's
BALL_SCALE = 1.0  # sample data: balls of 3.5-7.7 px radius at 64x64 (1.8 did not help the tokenizer: benchmarks/README.md)
LOSSLESS = {"crf": 0, "pix_fmt": "yuv444p"}  # H.264 near-lossless: compare the frames, not the codec
SAMPLE_FPS = 12  # the sample videos' frame rate (the simulation steps by it, so the foreground masks need it)
STEPS = 8

# Flags whose default depends on --family (None in the parser, filled in by `apply_family_defaults`).
FAMILY_DEFAULTS = {
    "ar": dict(workdir="quickstart_out", tokenizer_steps=600, train_steps=60, lr=3e-3),
    "diffusion": dict(workdir="quickstart_diffusion_out", tokenizer_steps=600, train_steps=300, lr=2e-3),
}


def _banner(i: int, text: str, total: int = STEPS) -> None:
    print(f"\n=== [{i}/{total}] {text}", flush=True)


def _run(cmd: list[str], env: dict | None = None) -> None:
    print("$ " + " ".join(cmd), flush=True)
    code = subprocess.call(cmd, env=env)
    if code != 0:
        raise SystemExit(f"quickstart: step failed (exit {code}): {' '.join(cmd)}")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cosmos_nemo", *args]


def _metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _setup(args: argparse.Namespace) -> tuple[Path, dict]:
    """The work folder (created) and the environment of the subprocess steps. megatron-core and torch warn
    about optional GPU libraries and deprecations on every import; the steps that run in this process would
    bury the output in them (subprocesses get PYTHONWARNINGS=ignore)."""
    warnings.filterwarnings("ignore")
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    return work, dict(os.environ, PYTHONWARNINGS="ignore", HF_HUB_OFFLINE="1")


def sample_data_step(work: Path, args: argparse.Namespace, total: int = STEPS) -> Path:
    """Step 1: the captioned sample videos (reused when complete)."""
    _banner(1, f"sample data: {args.num_videos} simulated videos of {args.video_frames} frames at {args.size}x{args.size}",
            total)
    from cosmos_nemo.data_prep.sample_data import generate_sample_dataset

    sample = work / "sample"
    if not (sample / "prompts.jsonl").is_file():
        generate_sample_dataset(sample, num_videos=args.num_videos, seed=args.seed, num_frames=args.video_frames,
                                height=args.size, width=args.size, fps=SAMPLE_FPS, progress=True,
                                ball_scale=args.ball_scale)
    print(f"wrote {sample}/videos/*.mp4 and metas/*.txt")
    return sample


def tokenizer_step(sample: Path, tok_dir: Path, args: argparse.Namespace, tokenizer: str, what: str,
                   total: int = STEPS) -> None:
    """Step 2: fit the tiny tokenizer `tokenizer` (a registry name) to the sample videos (reused when complete)."""
    _banner(2, f"fit the tiny {what} to the sample videos", total)
    from cosmos_nemo.tokenizers.loading import CONFIG_FILE
    from cosmos_nemo.tokenizers.train import TrainTokenizerConfig, train_tokenizer

    if (tok_dir / CONFIG_FILE).is_file():
        print(f"reusing {tok_dir}")
        return
    result = train_tokenizer(TrainTokenizerConfig(data=str(sample / "videos"), output=str(tok_dir), tokenizer=tokenizer,
                                                  num_frames=args.frames, height=args.size, width=args.size,
                                                  steps=args.tokenizer_steps, seed=args.seed))
    print(f"held-out reconstruction PSNR: {result.psnr_before:.2f} dB at random init -> {result.psnr_after:.2f} dB trained")


def train_and_resume_steps(train_cmd: list[str], runs: Path, run_name: str, args: argparse.Namespace, env: dict,
                           first: int, what: str, total: int = STEPS) -> Path:
    """Steps `first` and `first + 1`: train for `args.train_steps`, then run the same command with
    `args.resume_steps` more and check that it continued from the last checkpoint. Returns the run folder.
    A run folder already trained that far (a rerun of the quickstart) is reused."""
    _banner(first, f"train {what} for {args.train_steps} steps, TP={args.tensor_parallel} over {args.nproc} processes",
            total)
    previous = next(runs.glob(f"*/*/{run_name}"), None)
    done = max((m["step"] for m in _metrics(previous) if "train/loss" in m), default=0) if previous else 0
    if done >= args.train_steps + args.resume_steps:
        print(f"reusing {previous}: already trained to step {done}")
        _banner(first + 1, "resume-check: done by the run that trained it", total)
        return previous
    _run(train_cmd + [f"trainer.max_steps={args.train_steps}"], env)
    run_dir = next(runs.glob(f"*/*/{run_name}"), None)
    if run_dir is None:
        raise SystemExit(f"quickstart: no run folder named {run_name} under {runs}")
    metrics = _metrics(run_dir)

    _banner(first + 1, f"resume-check: the same command with {args.resume_steps} more steps continues from the last "
            "checkpoint", total)
    _run(train_cmd + [f"trainer.max_steps={args.train_steps + args.resume_steps}"], env)
    after = _metrics(run_dir)
    resumed_steps = [m["step"] for m in after[len(metrics):] if "train/loss" in m]
    if not resumed_steps or min(resumed_steps) != args.train_steps + 1:
        raise SystemExit(f"quickstart: the resumed run did not continue at step {args.train_steps + 1}: {resumed_steps}")
    print(f"resumed at step {min(resumed_steps)} and ran to step {max(resumed_steps)}")
    return run_dir


def tokenbench_step(pairs: list[tuple[Path, Path]], env: dict) -> None:
    """`evaluate tokenbench` of each (reference folder, compared folder); the reports land in the latter."""
    for gt, target in pairs:
        _run(_cli("evaluate", "tokenbench", "--gtpath", str(gt), "--targetpath", str(target)), env)


def print_summary(rows: dict[str, str], start: float) -> None:
    """The last step: one aligned line per row (what: where), then the total time."""
    for label, text in rows.items():
        print(f"{label + ':':<19}{text}")
    print(f"quickstart finished in {time.time() - start:.0f} s")


def heldout_summary(out: Path) -> dict[str, str]:
    """The summary rows of `out/heldout_psnr.json` (see `report_heldout`)."""
    m = json.loads((out / "heldout_psnr.json").read_text())["means"]
    return {"generated PSNR": f"{m['generated']:.2f} dB vs {m['repeat_last_frame']:.2f} dB repeating the last context "
                              f"frame (balls alone: {m['generated_balls']:.2f} vs {m['repeat_last_frame_balls']:.2f} dB)",
            "tokenizer PSNR": f"{m['reconstruction']:.2f} dB, balls alone {m['reconstruction_balls']:.2f} dB"}


def validation_summary(run_dir: Path) -> str | None:
    """'A at step i -> B at step j' of the run's first and last validation loss, or None without any."""
    vals = [m for m in _metrics(run_dir) if "val/loss" in m]
    if not vals:
        return None
    return (f"{vals[0]['val/loss']:.4f} at step {vals[0]['step']} -> {vals[-1]['val/loss']:.4f} at step "
            f"{vals[-1]['step']}")


def quickstart(args: argparse.Namespace) -> int:
    apply_family_defaults(args)
    if args.family == "diffusion":
        from cosmos_nemo.quickstart_diffusion import quickstart_diffusion

        return quickstart_diffusion(args)
    start = time.time()
    work, env = _setup(args)
    size, frames = args.size, args.frames

    sample = sample_data_step(work, args)
    tok_dir = work / "tokenizer"
    tokenizer_step(sample, tok_dir, args, "tiny", "video tokenizer")

    _banner(3, f"tokenize {frames}-frame windows (stride {args.stride}) into the AR token dataset")
    tokens = work / "tokens"
    _run(_cli("prepare", "ar-tokens", "--input_videos_dir", str(sample / "videos"), "--output_prefix", str(tokens),
              "--encoder_path", str(tok_dir), "--width", str(size), "--height", str(size),
              "--num_context_frames", str(frames), "--stride", str(args.stride),
              "--tokenizer_compression_factor", ",".join(map(str, TOKENIZER_COMPRESSION))), env)

    from cosmos_nemo.tokenizers.grid import latent_grid

    grid = latent_grid(frames, size, size, TOKENIZER_COMPRESSION)
    runs = work / "runs"
    run_name = "quickstart"
    train_cmd = _cli(
        "train", "cosmos_ar_tiny_finetune", "--nproc", str(args.nproc), "--quiet",
        f"data.paths=[{tokens}]", "data.split_string=8,1,1", f"parallel.tensor={args.tensor_parallel}",
        f"model.max_grid=[{grid.T},{grid.H},{grid.W}]", f"checkpoint.output_root={runs}", f"checkpoint.name={run_name}",
        f"data.global_batch_size={args.global_batch}", "data.micro_batch_size=2",
        f"optim.lr={args.lr}", f"trainer.val_interval={args.train_steps}", "trainer.val_batches=2",
        f"checkpoint.save_interval={args.train_steps}",
    )
    run_dir = train_and_resume_steps(train_cmd, runs, run_name, args, env, 4, "the tiny AR model")

    _banner(6, "generate continuations of held-out clips from their first latent frames")
    samples = generate_heldout(run_dir, tokens, tok_dir, work / "generated", args)

    _banner(7, "TokenBench (PSNR/SSIM) of the continuations and of the tokenizer reconstructions")
    tokenbench_step([(samples / "reference", samples / "generated"), (samples / "reference", samples / "reconstructed")],
                    env)

    _banner(8, "where everything is")
    val = validation_summary(run_dir)
    print_summary({
        **({"validation loss": f"{val} (uniform over 64,000 codes: 11.07)"} if val else {}),
        **heldout_summary(samples),
        "sample videos": f"{sample}/videos",
        "tokenizer": str(tok_dir),
        "token dataset": str(tokens),
        "run folder": f"{run_dir}  (checkpoints/, tensorboard/, metrics.jsonl, config.yaml)",
        "continuations": f"{samples}/generated/*.mp4, contact sheets {samples}/*.png",
        "TokenBench": f"{samples}/generated/tokenbench.json, {samples}/reconstructed/tokenbench.json",
    }, start)
    return 0


def generate_heldout(run_dir: Path, tokens: Path, tok_dir: Path, out: Path, args) -> Path:
    """Continue the test split's clips (by the run's split_string) and write reference, reconstruction
    and continuation mp4s side by side."""
    import torch

    from cosmos_nemo import parallel
    from cosmos_nemo.data import ARTokenDataset, split_ranges
    from cosmos_nemo.data_prep.clips import apply_geometry, geometry
    from cosmos_nemo.inference.ar import SamplingConfig, continue_clip
    from cosmos_nemo.inference.loading import load_trained_model
    from cosmos_nemo.data_prep.sample_data import foreground_masks
    from cosmos_nemo.inference.diffusion_cli import labelled_sheet, sheet_columns
    from cosmos_nemo.io.video import read_frames, write_mp4
    from cosmos_nemo.tokenizers import load_video_tokenizer

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    dataset = ARTokenDataset(tokens)
    docs = list(split_ranges(len(dataset), "8,1,1")["test"])[: args.num_generate]
    tokenizer = load_video_tokenizer(str(tok_dir))
    parallel.setup()
    try:
        model, _, ckpt = load_trained_model(run_dir)
        print(f"model from {ckpt}")
        for sub in ("reference", "reconstructed", "generated"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        scores = []
        for doc in docs:
            record = dataset[doc].record
            clip = read_frames(Path(args.workdir).resolve() / "sample" / "videos" / record["source"],
                               start=record["start_frame"], num_frames=record["num_frames"])
            clip = apply_geometry(clip, geometry(clip.shape[1], clip.shape[2], args.size, args.size, "crop"))
            t0 = time.time()
            generated, recon, grid, prompt_len = continue_clip(model, tokenizer, clip, args.context_frames,
                                                               SamplingConfig(top_p=0.8, seed=args.seed))
            name = f"doc{doc:04d}.mp4"
            for sub, video in (("reference", clip), ("reconstructed", recon), ("generated", generated)):
                write_mp4(out / sub / name, video, fps=SAMPLE_FPS, **LOSSLESS)
            # Scored as written (near-lossless: only the RGB/YUV rounding), so the files reproduce the numbers.
            clip, recon, generated = (read_frames(out / sub / name) for sub in ("reference", "reconstructed", "generated"))
            n = args.context_frames
            start = record["start_frame"]
            mask = foreground_masks(args.seed, sample_index(record["source"]), args.video_frames, args.size, args.size,
                                    SAMPLE_FPS, args.ball_scale)[start: start + clip.shape[0]]
            scores.append(heldout_scores(clip, recon, generated, n, mask))
            columns = sheet_columns(clip.shape[0], n)
            labelled_sheet([(label, {i: video[i] for i in columns}) for label, video in
                            (("reference", clip), ("reconstructed", recon), ("generated", generated))], columns, n,
                           f"doc {doc}: {record['source']} from frame {start}; generated after frame {n - 1} (red line)",
                           out / f"doc{doc:04d}.png")
            print(f"doc {doc} ({record['source']} from frame {record['start_frame']}): {prompt_len} context tokens, "
                  f"{grid.num_tokens - prompt_len} generated in {time.time() - t0:.1f} s")
    finally:
        parallel.teardown()
    report_heldout(scores, out, "the AR continuation")
    return out


def psnr(a, b, mask=None) -> float:
    """PSNR (dB) of two uint8 videos `[T, H, W, 3]` from one MSE over all their values (TokenBench's per-video
    definition), or over the pixels where `mask` `[T, H, W]` is true."""
    import numpy as np

    err = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2
    mse = float(err[mask].mean()) if mask is not None else float(err.mean())
    return float(20 * np.log10(255.0 / (np.sqrt(mse) + np.finfo(np.float32).eps)))


def sample_index(source: str) -> int:
    """The sample video's index from its file name (`sample_0021.mp4` -> 21)."""
    import re

    found = re.search(r"sample_(\d+)\.", Path(source).name)
    if found is None:
        raise ValueError(f"{source} is not a sample-data video (sample_NNNN.mp4)")
    return int(found.group(1))


def heldout_scores(clip, recon, generated, n_context: int, mask) -> dict[str, float]:
    """What the quickstart prints for one held-out clip (uint8 `[T, H, W, 3]` each; `mask` `[T, H, W]` the
    simulator's ball pixels): PSNR of the generated frames (from `n_context` on) against the clip, of the
    "repeat the last context frame" baseline over the same frames, and of the tokenizer's reconstruction over
    the whole clip and over the balls alone."""
    import numpy as np

    future = slice(n_context, clip.shape[0])
    repeat = np.repeat(clip[n_context - 1: n_context], clip.shape[0] - n_context, axis=0)
    return {
        "generated": psnr(generated[future], clip[future]),
        "repeat_last_frame": psnr(repeat, clip[future]),
        "generated_balls": psnr(generated[future], clip[future], mask[future]),
        "repeat_last_frame_balls": psnr(repeat, clip[future], mask[future]),
        "reconstruction": psnr(recon, clip),
        "reconstruction_balls": psnr(recon, clip, mask),
    }


def report_heldout(scores: list[dict[str, float]], out: Path, what: str) -> dict[str, float]:
    """Print the held-out means (generation vs the repeat-last-frame baseline, reconstruction overall and on the
    balls) and write them with the per-clip values to `out/heldout_psnr.json`."""
    from cosmos_nemo.io.atomic import atomic_write_text

    means = {k: sum(s[k] for s in scores) / len(scores) for k in scores[0]}
    verdict = "beats" if means["generated"] > means["repeat_last_frame"] else "does not beat"
    print(f"held-out PSNR over {len(scores)} clip(s), generated frames only: {what} {means['generated']:.2f} dB vs "
          f"repeat-last-context-frame {means['repeat_last_frame']:.2f} dB ({verdict} the baseline); on the balls "
          f"alone {means['generated_balls']:.2f} vs {means['repeat_last_frame_balls']:.2f} dB")
    print(f"tokenizer reconstruction PSNR: {means['reconstruction']:.2f} dB overall, {means['reconstruction_balls']:.2f} "
          "dB on the balls alone (the simulator's foreground mask)")
    atomic_write_text(out / "heldout_psnr.json", json.dumps({"means": means, "clips": scores}, indent=2) + "\n")
    return means


def apply_family_defaults(args: argparse.Namespace) -> None:
    """Fill the flags left unset (None) with the defaults of `args.family`."""
    for key, value in FAMILY_DEFAULTS[args.family].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


def _by_family(key: str) -> str:
    return ", ".join(f"{v[key]} for {family}" for family, v in FAMILY_DEFAULTS.items())


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart",
        help="run the whole path on a CPU in minutes: sample data, tokenizer, tokens or latents, TP=2 training, "
        "resume, generation, TokenBench (--family ar|diffusion)",
        description=__doc__.split("\n\n")[0] + " Steps with --family ar (the default): sample data -> fit a tiny "
        "tokenizer -> tokenize -> train the tiny AR recipe with TP=2 over 2 processes -> resume-check -> generate "
        "continuations -> TokenBench. With --family diffusion: sample data -> fit a tiny continuous tokenizer (and its "
        "latent statistics) -> text embeddings -> latents -> train the tiny Predict2.5 DiT with TP=2 over 2 processes "
        "-> resume-check -> Text2World and Video2World generations of held-out clips -> TokenBench. "
        "Rerunning reuses finished steps (sample data, tokenizer, tokens/latents, checkpoints).",
    )
    p.add_argument("--family", choices=sorted(FAMILY_DEFAULTS), default="ar",
                   help="ar (default): discrete tokens and the tiny autoregressive model; diffusion: continuous latents "
                   "and the tiny diffusion transformer (DiT), with Text2World and Video2World generation")
    p.add_argument("--workdir", default=None, help=f"where everything is written (default {_by_family('workdir')})")
    p.add_argument("--num-videos", "--num_videos", type=int, default=24, help="sample videos (default 24)")
    p.add_argument("--video-frames", "--video_frames", type=int, default=33, help="frames per sample video (default 33)")
    p.add_argument("--ball-scale", "--ball_scale", type=float, default=BALL_SCALE,
                   help=f"sample data: ball radius multiplier (default {BALL_SCALE}, sample-data's own sizes: radii 5.5/8.5/12 "
                   "%% of the frame)")
    p.add_argument("--frames", type=int, default=17, help="frames per training clip, 1 + 4k (default 17)")
    p.add_argument("--stride", type=int, default=8, help="frames between clip windows (default 8)")
    p.add_argument("--size", type=int, default=64,
                   help="frame height and width, a multiple of 8 (diffusion: of 16, the tokenizer x the DiT patch; "
                   "default 64)")
    p.add_argument("--tokenizer-steps", "--tokenizer_steps", type=int, default=None,
                   help=f"tokenizer training steps (default {_by_family('tokenizer_steps')})")
    p.add_argument("--train-steps", "--train_steps", type=int, default=None,
                   help=f"training steps before the resume check (default {_by_family('train_steps')})")
    p.add_argument("--resume-steps", "--resume_steps", type=int, default=5, help="steps run after resuming (default 5)")
    p.add_argument("--global-batch", "--global_batch", type=int, default=8, help="clips per optimizer step (default 8)")
    p.add_argument("--lr", type=float, default=None, help=f"learning rate (default {_by_family('lr')})")
    p.add_argument("--nproc", type=int, default=2, help="training processes (default 2)")
    p.add_argument("--tensor-parallel", "--tensor_parallel", type=int, default=2, help="tensor-parallel size (default 2)")
    p.add_argument("--context-frames", "--context_frames", type=int, default=5,
                   help="ar: frames given to the model, 1 + 4k (default 5); diffusion's Video2World always takes 2 "
                   "latent frames (5 frames)")
    p.add_argument("--num-generate", "--num_generate", type=int, default=2,
                   help="held-out clips to continue (diffusion: each generated by Text2World and by Video2World; "
                   "default 2)")
    p.add_argument("--sampling-steps", "--sampling_steps", type=int, default=20,
                   help="diffusion: sampler steps per generation (default 20)")
    p.add_argument("--guidance", type=float, default=0.0,
                   help="diffusion: classifier-free guidance (default 0: the tiny DiT is trained without dropping the "
                   "text, so it has no unconditional branch to guide with)")
    p.add_argument("--seed", type=int, default=0, help="seed for data, tokenizer and sampling (default 0)")
    p.set_defaults(func=quickstart)
