"""The reference commands, kept.

This room owns thin flag mappers that accept the flags of NVIDIA's reference scripts (general.py,
video2world_finetuning.py, ...) and run the same recipes and trainer; nothing else lives here."""
