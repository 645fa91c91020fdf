"""The Cosmos diffusion transformer (DiT) on megatron-core TransformerLayer.

This room owns the DiT architecture (adaLN-LoRA modulation, 3D RoPE, cross-attention to text) and its
named configs. It is empty until the diffusion family lands."""
