"""Generation for the AR and diffusion families.

This room owns sampling from trained models (KV-cached AR decoding with temperature/top-p/top-k, and
diffusion sampling), decoding tokens back to video, and writing mp4s and contact sheets."""
