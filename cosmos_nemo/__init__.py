"""cosmos-nemo: post-training recipes for NVIDIA Cosmos world foundation models on megatron-core."""

__version__ = "0.1.0"
