"""The reference commands, kept: thin flag mappers onto the recipes, run under torchrun.

- `general`: NeMo's post_training/general.py (AR 4B/12B, and tiny).
- `video2world_finetuning`: NeMo's video2world_finetuning.py (AR 5B/13B Video2World, and tiny_v2w).
- `common`: their shared flags, the model-size rule and the run in each rank.
"""
