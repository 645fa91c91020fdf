"""Model pieces shared by the AR and DiT families.

This room owns the torch-SDPA core attention used by the local layer spec, the choice between the local
and Transformer Engine specs, 3D rotary embeddings, and other embeddings shared across families."""
