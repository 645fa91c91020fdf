"""Parameter-efficient fine-tuning: LoRA as a model transform (`lora.py`) and its adapter files."""
