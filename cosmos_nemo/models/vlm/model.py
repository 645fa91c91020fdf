"""The Reasoner model chunk: a `transformers` Qwen3-VL inside a megatron module, so the shared trainer, megatron's
DDP, optimizer and dist-ckpt take it like any family's chunk.

The `transformers` model is `chunk.hf`; checkpoint keys are its parameter names under `hf.`, saved replicated over
the data-parallel ranks (megatron's default sharded state dict for modules that are not megatron's). The family
trains data-parallel only: Qwen3-VL's own layers are not tensor- or pipeline-parallel.
"""

from __future__ import annotations

import torch
from megatron.core.enums import ModelType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

from cosmos_nemo.models.vlm.config import VLMModelConfig


def _mrope_sections(head_dim: int) -> list[int]:
    """Qwen3-VL's interleaved 3D RoPE split of the rotary half (t, h, w), Qwen's 24:20:20 proportions."""
    half = head_dim // 2
    t = half * 3 // 8
    h = (half - t) // 2
    return [t, h, half - t - h]


def hf_config(cfg: VLMModelConfig, processor=None):
    """The `transformers` Qwen3VLConfig of `cfg` (tiny: built here; qwen3_vl: read from `cfg.model_name`)."""
    from transformers import AutoConfig, Qwen3VLConfig

    if cfg.name != "tiny":
        try:
            return AutoConfig.from_pretrained(cfg.model_name)
        except OSError as err:
            raise FileNotFoundError(
                f"cannot read the model config of {cfg.model_name!r} ({str(err).splitlines()[0][:200]}): pass a local "
                "snapshot folder as model.model_name, or run where the Hugging Face hub can be reached") from None
    from cosmos_nemo.models.vlm.processor import build_processor, token_ids

    ids = token_ids(processor or build_processor(cfg))
    head_dim = cfg.hidden_size // cfg.num_heads
    return Qwen3VLConfig(
        text_config=dict(vocab_size=len(ids) + 256, hidden_size=cfg.hidden_size, intermediate_size=2 * cfg.hidden_size,
                         num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                         num_key_value_heads=cfg.num_kv_heads, head_dim=head_dim, max_position_embeddings=8192,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                          "mrope_section": _mrope_sections(head_dim), "mrope_interleaved": True},
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=cfg.vision_depth, hidden_size=cfg.vision_hidden_size,
                           intermediate_size=2 * cfg.vision_hidden_size, num_heads=2, patch_size=16,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=cfg.hidden_size,
                           num_position_embeddings=64, deepstack_visual_indexes=[0]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False)


class VLMChunk(MegatronModule):
    """`hf` (a Qwen3VLForConditionalGeneration) with what megatron's schedules and DDP ask of a chunk."""

    def __init__(self, cfg: VLMModelConfig, hf_model: torch.nn.Module, config: TransformerConfig):
        super().__init__(config=config)
        self.cfg = cfg
        self.model_type = ModelType.encoder_or_decoder
        self.share_embeddings_and_output_weights = False
        self.pre_process = self.post_process = True
        self.hf = hf_model

    def set_input_tensor(self, tensor) -> None:  # one pipeline stage: nothing comes in
        return None

    def forward(self, input_ids, attention_mask=None, **vision) -> torch.Tensor:
        """Logits [B, L, vocab]."""
        return self.hf(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **vision).logits


def build_chunk(cfg: VLMModelConfig, dtype: torch.dtype = torch.float32) -> VLMChunk:
    from transformers import Qwen3VLForConditionalGeneration

    cfg.check()
    hf_cfg = hf_config(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        hf = Qwen3VLForConditionalGeneration._from_config(hf_cfg, attn_implementation=cfg.attn_implementation)
    hf = hf.to(dtype)
    if cfg.gradient_checkpointing:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    text = hf_cfg.text_config
    config = TransformerConfig(num_layers=text.num_hidden_layers, hidden_size=text.hidden_size,
                               num_attention_heads=text.num_attention_heads, params_dtype=dtype,
                               pipeline_dtype=dtype, bf16=dtype == torch.bfloat16, use_cpu_initialization=True)
    return VLMChunk(cfg, hf, config)
