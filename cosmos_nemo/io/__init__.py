"""Video and tensor I/O.

This room owns reading and writing video with PyAV (rotation metadata applied, frames as decoded, zero
decoded frames is an error), safetensors helpers, and safe path joins that keep manifest paths inside
their dataset root (paths.py), and small synthetic media for tests and benchmarks (synthetic.py: any
codec/container, rotation, VFR, 10-bit, audio-only, truncated and damaged files). Nothing here knows about
models or training."""
