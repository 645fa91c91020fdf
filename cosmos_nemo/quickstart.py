"""`cosmos-nemo quickstart`: the whole post-training path on a CPU in minutes, with no network.

1. sample-data: simulated bouncing-ball videos with captions;
2. train-tokenizer: fit a tiny Cosmos causal video tokenizer (the real architecture) to them;
3. prepare ar-tokens: tokenize sliding windows into the AR token dataset;
4. train the tiny AR recipe with TP=2 over 2 processes (torchrun through nemo-run);
5. resume-check: run the same command for a few more steps; it continues from the last checkpoint;
6. generate continuations of held-out clips from their first latent frames, and decode them;
7. TokenBench PSNR/SSIM of the continuations (and of the tokenizer's reconstructions) against the clips;
8. print where everything is.

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


def _banner(i: int, text: str) -> None:
    print(f"\n=== [{i}/8] {text}", flush=True)


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


def quickstart(args: argparse.Namespace) -> int:
    # megatron-core and torch warn about optional GPU libraries and deprecations on every import; the steps
    # that run in this process would bury the output in them (subprocesses get PYTHONWARNINGS=ignore).
    warnings.filterwarnings("ignore")
    start = time.time()
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONWARNINGS="ignore", HF_HUB_OFFLINE="1")
    size, frames = args.size, args.frames

    _banner(1, f"sample data: {args.num_videos} simulated videos of {args.video_frames} frames at {size}x{size}")
    from cosmos_nemo.data_prep.sample_data import generate_sample_dataset

    sample = work / "sample"
    if not (sample / "prompts.jsonl").is_file():
        generate_sample_dataset(sample, num_videos=args.num_videos, seed=args.seed, num_frames=args.video_frames,
                                height=size, width=size, progress=True)
    print(f"wrote {sample}/videos/*.mp4 and metas/*.txt")

    _banner(2, "fit the tiny video tokenizer to the sample videos")
    from cosmos_nemo.tokenizers.train import TrainTokenizerConfig, train_tokenizer

    tok_dir = work / "tokenizer"
    if not (tok_dir / "config.json").is_file():
        result = train_tokenizer(TrainTokenizerConfig(data=str(sample / "videos"), output=str(tok_dir), num_frames=frames,
                                                      height=size, width=size, steps=args.tokenizer_steps, seed=args.seed))
        print(f"held-out reconstruction PSNR: {result.psnr_before:.2f} dB at random init -> {result.psnr_after:.2f} dB trained")

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
    _banner(4, f"train the tiny AR model for {args.train_steps} steps, TP={args.tensor_parallel} over {args.nproc} processes")
    _run(train_cmd + [f"trainer.max_steps={args.train_steps}"], env)
    run_dir = next(runs.glob(f"*/*/{run_name}"), None)
    if run_dir is None:
        raise SystemExit(f"quickstart: no run folder named {run_name} under {runs}")
    metrics = _metrics(run_dir)

    _banner(5, f"resume-check: the same command with {args.resume_steps} more steps continues from the last checkpoint")
    _run(train_cmd + [f"trainer.max_steps={args.train_steps + args.resume_steps}"], env)
    after = _metrics(run_dir)
    resumed_steps = [m["step"] for m in after[len(metrics):] if "train/loss" in m]
    if not resumed_steps or min(resumed_steps) != args.train_steps + 1:
        raise SystemExit(f"quickstart: the resumed run did not continue at step {args.train_steps + 1}: {resumed_steps}")
    print(f"resumed at step {min(resumed_steps)} and ran to step {max(resumed_steps)}")

    _banner(6, "generate continuations of held-out clips from their first latent frames")
    samples = generate_heldout(run_dir, tokens, tok_dir, work / "generated", args)

    _banner(7, "TokenBench (PSNR/SSIM) of the continuations and of the tokenizer reconstructions")
    _run(_cli("evaluate", "tokenbench", "--gtpath", str(samples / "reference"), "--targetpath", str(samples / "generated")), env)
    _run(_cli("evaluate", "tokenbench", "--gtpath", str(samples / "reference"), "--targetpath", str(samples / "reconstructed")), env)

    _banner(8, "where everything is")
    vals = [m for m in _metrics(run_dir) if "val/loss" in m]
    if vals:
        print(f"validation loss: {vals[0]['val/loss']:.4f} at step {vals[0]['step']} -> {vals[-1]['val/loss']:.4f} at step "
              f"{vals[-1]['step']} (uniform over 64,000 codes: 11.07)")
    print(f"sample videos:     {sample}/videos")
    print(f"tokenizer:         {tok_dir}")
    print(f"token dataset:     {tokens}")
    print(f"run folder:        {run_dir}  (checkpoints/, tensorboard/, metrics.jsonl, config.yaml)")
    print(f"continuations:     {samples}/generated/*.mp4, contact sheets {samples}/*.png")
    print(f"TokenBench:        {samples}/generated/tokenbench.json, {samples}/reconstructed/tokenbench.json")
    print(f"quickstart finished in {time.time() - start:.0f} s")
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
    from cosmos_nemo.inference.media import contact_sheet
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
        for doc in docs:
            record = dataset[doc].record
            clip = read_frames(Path(args.workdir).resolve() / "sample" / "videos" / record["source"],
                               start=record["start_frame"], num_frames=record["num_frames"])
            clip = apply_geometry(clip, geometry(clip.shape[1], clip.shape[2], args.size, args.size, "crop"))
            t0 = time.time()
            generated, recon, grid, prompt_len = continue_clip(model, tokenizer, clip, args.context_frames,
                                                               SamplingConfig(top_p=0.8, seed=args.seed))
            name = f"doc{doc:04d}.mp4"
            write_mp4(out / "reference" / name, clip, fps=12)
            write_mp4(out / "reconstructed" / name, recon, fps=12)
            write_mp4(out / "generated" / name, generated, fps=12)
            contact_sheet({"reference": clip, "reconstructed": recon, "generated": generated}, out / f"doc{doc:04d}.png")
            print(f"doc {doc} ({record['source']} from frame {record['start_frame']}): {prompt_len} context tokens, "
                  f"{grid.num_tokens - prompt_len} generated in {time.time() - t0:.1f} s")
    finally:
        parallel.teardown()
    return out


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart",
        help="run the whole path on a CPU in minutes: sample data, tokenizer, tokens, TP=2 training, resume, "
        "generation, TokenBench",
        description=__doc__.split("\n\n")[0] + " Steps: sample data -> fit a tiny tokenizer -> tokenize -> train the "
        "tiny AR recipe with TP=2 over 2 processes -> resume-check -> generate continuations -> TokenBench. "
        "Rerunning reuses finished steps (sample data, tokenizer, tokens, checkpoints).",
    )
    p.add_argument("--workdir", default="quickstart_out", help="where everything is written (default quickstart_out)")
    p.add_argument("--num-videos", "--num_videos", type=int, default=24, help="sample videos (default 24)")
    p.add_argument("--video-frames", "--video_frames", type=int, default=33, help="frames per sample video (default 33)")
    p.add_argument("--frames", type=int, default=17, help="frames per training clip, 1 + 4k (default 17)")
    p.add_argument("--stride", type=int, default=8, help="frames between clip windows (default 8)")
    p.add_argument("--size", type=int, default=64, help="frame height and width, a multiple of 8 (default 64)")
    p.add_argument("--tokenizer-steps", "--tokenizer_steps", type=int, default=600, help="tokenizer training steps (default 600)")
    p.add_argument("--train-steps", "--train_steps", type=int, default=60, help="AR training steps before the resume check (default 60)")
    p.add_argument("--resume-steps", "--resume_steps", type=int, default=5, help="steps run after resuming (default 5)")
    p.add_argument("--global-batch", "--global_batch", type=int, default=8, help="clips per optimizer step (default 8)")
    p.add_argument("--lr", type=float, default=3e-3, help="AR learning rate (default 3e-3)")
    p.add_argument("--nproc", type=int, default=2, help="training processes (default 2)")
    p.add_argument("--tensor-parallel", "--tensor_parallel", type=int, default=2, help="tensor-parallel size (default 2)")
    p.add_argument("--context-frames", "--context_frames", type=int, default=5, help="frames given to the model, 1 + 4k (default 5)")
    p.add_argument("--num-generate", "--num_generate", type=int, default=2, help="held-out clips to continue (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed for data, tokenizer and sampling (default 0)")
    p.set_defaults(func=quickstart)
