"""Latent precompute throughput (`cosmos-nemo prepare latents`): 1 worker against 2, byte-identical output.

The peer is the same command with one worker (what a single-process reference precompute does), in the same
run: synthetic 12 fps mp4s written with PyAV in the reference `videos/` + `metas/` layout, a randomly
initialised Wan2.1-architecture VAE (diffusers' `AutoencoderKLWan`, the real encoder code at a small width:
no weights can be downloaded here) and the offline MiniLM text encoder. Printed: clips/s for each worker
count, the speed-up (target >= 1.7x on 2 cores) and whether every output file is byte-identical.

    python benchmarks/latents.py                 # 8 videos x 51 frames at 64x96, 17-frame clips
    python benchmarks/latents.py --videos 16 --base-dim 48
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=8, help="synthetic videos (default 8)")
    p.add_argument("--frames", type=int, default=51, help="frames per video (default 51)")
    p.add_argument("--clip-frames", type=int, default=17, help="frames per clip, 1 + 4k for Wan2.1 (default 17)")
    p.add_argument("--base-dim", type=int, default=32, help="VAE base width (default 32; the release uses 96)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder and print its path")
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from diffusers_peer import cosmos_transformer_class

    cosmos_transformer_class()  # makes diffusers importable beside the CPU torch (see tests/diffusers_peer.py)
    from cosmos_nemo.data_prep.latents import prepare_latents
    from cosmos_nemo.data_prep.settings import LatentsConfig
    from cosmos_nemo.data_prep.vae import import_autoencoder_kl_wan
    from cosmos_nemo.io import synthetic
    from cosmos_nemo.io.video import write_mp4

    base = Path(tempfile.mkdtemp(prefix="latents_bench_"))
    root = base / "ds"
    (root / "videos").mkdir(parents=True)
    (root / "metas").mkdir()
    for i in range(args.videos):
        write_mp4(root / "videos" / f"v{i}.mp4", synthetic.pattern_frames(args.frames, 64, 96, seed=i), fps=12)
        (root / "metas" / f"v{i}.txt").write_text(f"a synthetic scene number {i % 3}")
    torch.manual_seed(0)
    import_autoencoder_kl_wan()(base_dim=args.base_dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                                temperal_downsample=[False, True, True]).save_pretrained(base / "wan")
    times, clips = {}, {}
    for workers in (1, 2):
        cfg = LatentsConfig(dataset_path=root, output_dir=base / f"out{workers}", vae_path=str(base / "wan"),
                            num_frames=args.clip_frames, video_size=[64, 96], text_encoder="minilm", progress=False,
                            device="cpu", workers=workers)
        start = time.perf_counter()
        report = prepare_latents(cfg)
        times[workers], clips[workers] = time.perf_counter() - start, report.num_documents
        print(f"{workers} worker(s): {clips[workers]} clips in {times[workers]:.1f} s = "
              f"{clips[workers] / times[workers]:.2f} clips/s", flush=True)
    names = sorted(os.listdir(base / "out1"))
    same = names == sorted(os.listdir(base / "out2")) and all(
        (base / "out1" / n).read_bytes() == (base / "out2" / n).read_bytes() for n in names if (base / "out1" / n).is_file())
    print(f"2 workers / 1 worker: {times[1] / times[2]:.2f}x (target >= 1.7x); outputs byte-identical: {same}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if args.keep:
        print(f"kept {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
