"""The Cosmos autoregressive world model on megatron-core GPTModel.

This room owns the AR architecture (Llama-style blocks with QK-RMSNorm, 3D RoPE with YaRN, and the
Video2World cross-attention and absolute position embedding), its named configs, and its step function."""
