"""Checkpoint converters and key maps.

This room owns conversion between layouts (released Cosmos .pt, megatron dist-ckpt, HF safetensors),
TP shard/merge, LoRA merge and EMA extraction. Every conversion is strict: each key is loaded, expected
missing, or reported as an error."""
