"""Evaluation: TokenBench metrics and reports.

This room owns PSNR, SSIM, LPIPS and FVD exactly as TokenBench defines them, pairing of reference and
generated videos, streaming computation, and the JSON reports and printed tables.

* `metrics`: PSNR (global MSE) and SSIM (scikit-image defaults) from uint8 frames, exact and streaming;
* `lpips`: LPIPS v0.1 with a VGG16 trunk, loaded from local weight files (no torchvision);
* `fvd`: StyleGAN-V I3D features (TorchScript file) and the Fréchet distance;
* `sources`: pairing by relative path, chunked decoding, the reference `token_bench.py` preprocessing;
* `tokenbench`: the evaluation run, reports and table; `commands`: `cosmos-nemo evaluate tokenbench`;
* `synthetic`: natural-looking synthetic clips for tests and benchmarks.
"""
