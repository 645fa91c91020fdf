"""`cosmos-nemo quickstart --family diffusion`: the diffusion post-training path on a CPU in minutes, offline.

1. sample-data: simulated bouncing-ball videos with captions (the reference `videos/` + `metas/` layout);
2. train-tokenizer: fit a tiny continuous Cosmos tokenizer (`tiny-cv`: the real CV architecture, 4x8x8, 16
   latent channels) and write its per-channel, per-latent-frame statistics (`mean_std.safetensors`, what
   `mean_std.pt` is to the released CV8x8x8), so its latents are normalised like the released ones;
3. prepare text-embeddings: one MiniLM embedding per distinct caption (the offline stand-in for T5/Reason1);
4. prepare latents: clip windows encoded with the tokenizer into the DiT latent dataset;
5. train the tiny Predict2.5 DiT (rectified flow, Text/Image/Video2World in one model) with TP=2 over 2
   processes (torchrun through nemo-run);
6. resume-check: the same command for a few more steps continues from the last checkpoint;
7. generate, with `cosmos-nemo generate diffusion`, a Text2World video from each held-out clip's caption and a
   Video2World continuation of its first 2 latent frames; also the tokenizer's reconstruction of the clip;
8. TokenBench PSNR/SSIM of the generations (T2W and V2W rows) and of the reconstructions against the clips;
9. print where everything is.

The held-out clips are the test split of the latent dataset (by the run's split_string); they come from the
last videos, which the tokenizer never trained on either.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from cosmos_nemo.quickstart import (
    LOSSLESS,
    SAMPLE_FPS,
    _banner,
    _cli,
    _run,
    _setup,
    heldout_scores,
    heldout_summary,
    print_summary,
    report_heldout,
    sample_index,
    sample_data_step,
    tokenizer_step,
    tokenbench_step,
    train_and_resume_steps,
    validation_summary,
)

STEPS = 9
TOKENIZER = "tiny-cv"
RECIPE = "cosmos_predict25_tiny_finetune"
RUN_NAME = "quickstart_diffusion"
STATS_FILE = "mean_std.safetensors"  # = tokenizers.train.STATS_FILE (repeated so this module imports no torch)
TEXT_ENCODER = "minilm"
SPLIT = "8,1,1"


def quickstart_diffusion(args: argparse.Namespace) -> int:
    start = time.time()
    if args.num_generate < 1:
        raise SystemExit("quickstart: --num-generate must be >= 1 (the held-out clips to generate from)")
    work, env = _setup(args)
    size, frames = args.size, args.frames

    sample = sample_data_step(work, args, STEPS)
    tok_dir = work / "tokenizer"
    tokenizer_step(sample, tok_dir, args, TOKENIZER, "continuous video tokenizer (tiny-cv, 16 latent channels)", STEPS)
    if not (tok_dir / STATS_FILE).is_file():
        write_latent_statistics(tok_dir, sample, args)

    _banner(3, f"embed the captions with the offline {TEXT_ENCODER} text encoder", STEPS)
    _run(_cli("prepare", "text-embeddings", "--dataset_path", str(sample), "--text-encoder", TEXT_ENCODER,
              "--no-progress"), env)

    _banner(4, f"encode {frames}-frame windows (stride {args.stride}) into the DiT latent dataset", STEPS)
    latents = work / "latents"
    _run(_cli("prepare", "latents", "--dataset_path", str(sample), "--output_dir", str(latents), "--vae", "cosmos-cv",
              "--vae-path", str(tok_dir), "--latent-scale", "1.0", "--num_frames", str(frames),
              "--video_size", str(size), str(size), "--start_frame_interval", str(args.stride), "--workers", "2",
              "--no-progress"), env)
    text = json.loads((latents / "dataset.json").read_text())["text"]

    runs = work / "runs"
    val_interval = args.train_steps // 5 if args.train_steps >= 5 and args.train_steps % 5 == 0 else args.train_steps
    train_cmd = _cli(
        "train", RECIPE, "--nproc", str(args.nproc), "--quiet", f"data.paths=[{latents}]", f"data.split_string={SPLIT}",
        f"parallel.tensor={args.tensor_parallel}", f"model.crossattn_proj_in={text['dim']}",
        f"checkpoint.output_root={runs}", f"checkpoint.name={RUN_NAME}", f"data.global_batch_size={args.global_batch}",
        "data.micro_batch_size=2", f"optim.lr={args.lr}", f"optim.min_lr={args.lr / 10}",
        f"trainer.val_interval={val_interval}", "trainer.val_batches=4", f"checkpoint.save_interval={args.train_steps}",
    )
    run_dir = train_and_resume_steps(train_cmd, runs, RUN_NAME, args, env, 5, "the tiny Predict2.5 DiT", STEPS)

    _banner(7, "generate Text2World and Video2World videos of held-out clips, and the tokenizer's reconstructions", STEPS)
    out = work / "generated"
    docs = prepare_heldout(latents, sample, tok_dir, out, args)
    fps = docs[0]["fps"]
    _run(_cli("generate", "diffusion", "-i", str(out / "specs.json"), "-o", str(out / "generated"),
              "--checkpoint-path", str(run_dir), "--vae", "cosmos-cv", "--vae-path", str(tok_dir), "--latent-scale", "1.0",
              "--text-encoder", TEXT_ENCODER, "--prompt-length", str(text["length"]), "--resolution", f"{size},{size}",
              "--num_output_frames", str(frames), "--num_steps", str(args.sampling_steps), "--guidance", str(args.guidance),
              "--seed", str(args.seed), "--fps", str(fps), "--batch-size", "1", "--lossless"), env)
    contact_sheets(out, docs, docs[0]["n_input"])
    heldout_psnr(out, docs, args)

    _banner(8, "TokenBench (PSNR/SSIM) of the generations (T2W, V2W) and of the tokenizer reconstructions", STEPS)
    tokenbench_step([(out / "reference", out / "generated"), (out / "held_out", out / "reconstructed")], env)

    _banner(9, "where everything is", STEPS)
    val = validation_summary(run_dir)
    print_summary({
        **({"validation loss": f"{val} (flow matching: the velocity's mean squared error)"} if val else {}),
        "TokenBench PSNR": psnr_summary(out),
        **heldout_summary(out),
        "sample videos": f"{sample}/videos, captions {sample}/metas, text embeddings {sample}/text_embeddings.safetensors",
        "tokenizer": f"{tok_dir}  (with its latent statistics {STATS_FILE})",
        "latent dataset": str(latents),
        "run folder": f"{run_dir}  (checkpoints/, metrics.jsonl, config.yaml)",
        "generations": f"{out}/generated/{{t2w,v2w}}_*.mp4 (+ .png), held-out clips {out}/held_out, contact sheets "
                       f"{out}/*.png",
        "TokenBench": f"{out}/generated/tokenbench.json, {out}/reconstructed/tokenbench.json",
    }, start)
    return 0


def write_latent_statistics(tok_dir: Path, sample: Path, args: argparse.Namespace) -> Path:
    """`mean_std.safetensors` beside a tokenizer folder that lacks it (one written before `train-tokenizer` wrote
    it itself): the per-channel, per-latent-frame latent statistics over the tokenizer's training clips."""
    from cosmos_nemo.io.tensors import save_tensors
    from cosmos_nemo.tokenizers import load_video_tokenizer
    from cosmos_nemo.tokenizers.train import latent_statistics, load_clips, split_heldout

    tokenizer = load_video_tokenizer(str(tok_dir))
    per_video, _, _ = load_clips(sample / "videos", args.frames, args.size, args.size, clips_per_video=4)
    train_clips, _ = split_heldout(per_video, 0)  # the tokenizer's own training clips
    mean, std = latent_statistics(tokenizer, train_clips)
    path = save_tensors(tok_dir / STATS_FILE, {"mean": mean, "std": std},
                        metadata={"clips": str(len(train_clips)), "frames": str(args.frames)})
    print(f"latent statistics of {len(train_clips)} training clips ({tuple(mean.shape)} channels x latent frames; "
          f"std {float(std.min()):.3f}..{float(std.max()):.3f}) -> {path}")
    return path


def prepare_heldout(latents: Path, sample: Path, tok_dir: Path, out: Path, args: argparse.Namespace) -> list[dict]:
    """For the first `num_generate` documents of the test split: the clip (`held_out/`, and under both generation
    names in `reference/`), its tokenizer reconstruction (`reconstructed/`), the Video2World input of its first
    2 latent frames (`inputs/`), and the generation specs (`specs.json`). Returns the documents' records."""
    import numpy as np

    from cosmos_nemo.data import split_ranges
    from cosmos_nemo.data_prep.clips import apply_geometry, geometry
    from cosmos_nemo.data_prep.vae import decode_latents, load_latent_encoder
    from cosmos_nemo.io.video import read_frames, write_mp4

    records = [json.loads(line) for line in (latents / "manifest.jsonl").read_text().splitlines() if line.strip()]
    test = list(split_ranges(len(records), SPLIT)["test"])[: args.num_generate]
    vae = load_latent_encoder("cosmos-cv", str(tok_dir), latent_scale=1.0)
    n_input = 1 + vae.compression[0]  # 2 latent frames: Video2World's conditional frames
    for sub in ("held_out", "reference", "reconstructed", "inputs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    specs, docs = [], []
    for doc in test:
        rec = records[doc]
        clip = read_frames(sample / rec["source"], start=rec["start_frame"], num_frames=rec["num_frames"])
        clip = apply_geometry(clip, geometry(clip.shape[1], clip.shape[2], args.size, args.size, "crop"))
        fps = float(rec.get("fps") or 24.0)
        name = f"doc{doc:04d}"
        write_mp4(out / "held_out" / f"{name}.mp4", clip, fps=fps, **LOSSLESS)
        for mode in ("t2w", "v2w"):
            shutil.copyfile(out / "held_out" / f"{name}.mp4", out / "reference" / f"{mode}_{name}.mp4")
        recon = decode_latents(vae, vae.encode(np.ascontiguousarray(clip)[None]))[0][: clip.shape[0]]
        write_mp4(out / "reconstructed" / f"{name}.mp4", recon, fps=fps, **LOSSLESS)
        write_mp4(out / "inputs" / f"{name}.mp4", clip[:n_input], fps=fps, **LOSSLESS)
        caption = rec.get("caption") or "A video."
        specs.append({"inference_type": "text2world", "name": f"t2w_{name}", "prompt": caption})
        specs.append({"inference_type": "video2world", "name": f"v2w_{name}", "prompt": caption,
                      "input_path": f"inputs/{name}.mp4"})
        docs.append({"doc": doc, "name": name, "source": rec["source"], "start_frame": rec["start_frame"], "fps": fps,
                     "n_input": n_input})
        print(f"held-out doc {doc}: {rec['source']} from frame {rec['start_frame']}; Video2World input: its first "
              f"{n_input} frames")
    (out / "specs.json").write_text(json.dumps(specs, indent=2) + "\n")
    return docs


def contact_sheets(out: Path, docs: list[dict], n_input: int) -> None:
    """`OUT/docNNNN.png`: the held-out clip, its reconstruction and the two generations, frame by frame (a red line
    where Video2World starts generating)."""
    from cosmos_nemo.inference.diffusion_cli import labelled_sheet, sheet_columns
    from cosmos_nemo.io.video import read_frames

    for d in docs:
        name = d["name"]
        clips = {"held-out": out / "held_out" / f"{name}.mp4", "reconstructed": out / "reconstructed" / f"{name}.mp4",
                 "video2world": out / "generated" / f"v2w_{name}.mp4", "text2world": out / "generated" / f"t2w_{name}.mp4"}
        frames = {label: read_frames(path) for label, path in clips.items()}
        columns = sheet_columns(min(len(v) for v in frames.values()), n_input)
        rows = [(label, {i: video[i] for i in columns}) for label, video in frames.items()]
        labelled_sheet(rows, columns, n_input, f"{name}: {d['source']} from frame {d['start_frame']}; Video2World "
                       f"from its first {n_input} frames (red line)", out / f"{name}.png")


def heldout_psnr(out: Path, docs: list[dict], args: argparse.Namespace) -> dict[str, float]:
    """The Video2World continuations against the repeat-last-conditional-frame baseline, and the tokenizer's
    reconstructions overall and on the balls alone (the simulator's foreground mask), printed and written to
    `OUT/heldout_psnr.json`."""
    from cosmos_nemo.data_prep.sample_data import foreground_masks
    from cosmos_nemo.io.video import read_frames

    scores = []
    for d in docs:
        clip = read_frames(out / "held_out" / f"{d['name']}.mp4")
        recon = read_frames(out / "reconstructed" / f"{d['name']}.mp4")
        generated = read_frames(out / "generated" / f"v2w_{d['name']}.mp4")
        n = min(len(clip), len(recon), len(generated))
        mask = foreground_masks(args.seed, sample_index(d["source"]), args.video_frames, args.size, args.size,
                                SAMPLE_FPS, args.ball_scale)[d["start_frame"]: d["start_frame"] + n]
        scores.append(heldout_scores(clip[:n], recon[:n], generated[:n], d["n_input"], mask))
    return report_heldout(scores, out, "Video2World")


def psnr_summary(out: Path) -> str:
    """'T2W a dB, V2W b dB, tokenizer reconstructions c dB' from the TokenBench reports."""
    gen = json.loads((out / "generated" / "tokenbench.json").read_text())
    rec = json.loads((out / "reconstructed" / "tokenbench.json").read_text())
    parts = [f"{mode.upper()} {gen['subsets'][f'{mode}_']['psnr']:.2f} dB" for mode in ("t2w", "v2w")
             if f"{mode}_" in gen.get("subsets", {})]
    parts.append(f"tokenizer reconstructions {rec['means']['psnr']:.2f} dB")
    return ", ".join(parts) + " (vs the held-out clips)"
