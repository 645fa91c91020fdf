"""The Reasoner (VLM) model config: which Qwen3-VL, how a video is shown to it, and the tiny offline variant.

Two kinds of model:
- `name="qwen3_vl"`: the architecture and the processor (tokenizer, chat template, video processor) of
  `model_name`, a hub id (`Qwen/Qwen3-VL-8B-Instruct`, the reference's backbone) or a local snapshot folder; the
  weights come from `checkpoint.pretrained` (the same snapshot, or a merged one such as the reference's
  `VLM_SAFETENSORS_PATH`).
- `name="tiny"`: the same `transformers` class (`Qwen3VLForConditionalGeneration`) at a few hundred thousand
  parameters, with a byte-level tokenizer and a Qwen-style chat template built here, so it runs on a CPU with no
  download (random init unless `checkpoint.pretrained` is given).

A video is shown as `num_frames` frames sampled evenly over the clip, each resized (aspect kept) to at most
`max_pixels` pixels with sides that are multiples of the vision tower's patch x merge size.
"""

from __future__ import annotations

from dataclasses import dataclass

QWEN3_VL_8B = "Qwen/Qwen3-VL-8B-Instruct"
NAMES = ("tiny", "qwen3_vl")


@dataclass
class VLMModelConfig:
    name: str = "tiny"
    family: str = "vlm"
    model_name: str = QWEN3_VL_8B  # architecture + processor source for name="qwen3_vl" (hub id or folder)
    attn_implementation: str = "sdpa"  # "sdpa" | "eager" | "flash_attention_2" (the reference's "cosmos" -> sdpa)
    gradient_checkpointing: bool = False  # [model.activation_checkpointing] mode = "full"
    num_frames: int = 8  # frames sampled per video (even: the vision tower patches 2 frames at a time)
    max_pixels: int = 128 * 128  # per frame, after resizing
    max_tokens: int = 16384  # a sample longer than this is skipped with a reason (the reference's data_setting.max_tokens)
    # the tiny architecture (name="tiny" only)
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    vision_depth: int = 2
    vision_hidden_size: int = 32
    seed: int = 0  # random init of the tiny model

    def check(self) -> None:
        if self.name not in NAMES:
            raise ValueError(f"model.name must be one of {NAMES} (the Reasoner family), got {self.name!r}")
        if self.num_frames < 2 or self.num_frames % 2:
            raise ValueError(f"model.num_frames must be even and >= 2 (Qwen3-VL patches 2 frames at a time), "
                             f"got {self.num_frames}")
        if self.attn_implementation not in ("sdpa", "eager", "flash_attention_2"):
            raise ValueError(f"model.attn_implementation must be sdpa, eager or flash_attention_2, got "
                             f"{self.attn_implementation!r}")
        if self.max_pixels < 32 * 32:
            raise ValueError(f"model.max_pixels must be at least 1024 (one 32x32 merged patch), got {self.max_pixels}")
