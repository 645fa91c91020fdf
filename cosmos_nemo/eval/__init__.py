"""Evaluation: TokenBench metrics and reports.

This room owns PSNR, SSIM, LPIPS and FVD exactly as TokenBench defines them, pairing of reference and
generated videos, streaming computation, and the JSON reports and printed tables."""
