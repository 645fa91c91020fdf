"""Model definitions built from megatron-core modules.

common/ holds pieces shared by model families (SDPA core attention, layer specs, 3D RoPE, embeddings);
ar/ is the Cosmos autoregressive family on megatron GPTModel; family.py is the provider protocol every
family implements (the diffusion transformer gets its room, dit/, when it lands)."""
