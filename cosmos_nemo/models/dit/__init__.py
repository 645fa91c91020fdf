"""The Cosmos diffusion transformer (DiT) family: Predict1, Predict2 and Predict2.5 on megatron-core."""
