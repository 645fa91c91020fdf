"""Cosmos video tokenizers, text encoders and latent-grid arithmetic.

This room owns the causal video tokenizers (discrete FSQ DV* and continuous CV*), their weight loaders
for released TorchScript and safetensors files, the text encoders (T5 for production, a small offline
encoder for tests), and the one place where frames/height/width are converted to a latent grid and a
sequence length (grid.py)."""
