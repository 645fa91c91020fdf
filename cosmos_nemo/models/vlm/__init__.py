"""The Reasoner family: a `transformers` vision-language model (Qwen3-VL) fine-tuned on video+text conversations
with the loss on assistant tokens only (NVIDIA's Cosmos3 "Reasoner alignment SFT", seed 000)."""
