"""Parameter-efficient fine-tuning.

This room owns LoRA on megatron parallel linears: injecting adapters by target module names, merging them
back into the base weights, and adapter-only state dicts. It is empty until LoRA lands."""
