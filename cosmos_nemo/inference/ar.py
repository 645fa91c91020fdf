"""AR generation: continue a video's tokens with the KV-cached model, then decode them to frames.

Sampling follows the NeMo/megatron reference controller: logits / temperature; `top_k > 1` keeps the k
largest, else `0 < top_p < 1` keeps the smallest set of tokens whose probability reaches top_p
(nucleus); softmax; one multinomial draw. `top_k == 1` is greedy. Generation runs the same model the
trainer trains (no second model): a prefill over the context tokens, then one token at a time through
megatron's static KV cache, with 3D RoPE positions taken from the clip's latent grid.

Unlike the reference scripts, nothing is hard-coded to a 5x40x64 grid: the grid comes from the clip, and
the context is a whole number of latent frames of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class SamplingConfig:
    temperature: float = 1.0
    top_p: float = 0.8
    top_k: int = 0
    seed: int = 0


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set the logits of tokens outside the top-k / nucleus to -inf (last dim is the vocabulary)."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        return logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        # Drop a token once the mass *before* it exceeds top_p (the first token always stays), as
        # megatron's modify_logits_for_top_p_filtering and the native sampler do.
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) > top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        return logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of `logits` [B, V]."""
    if cfg.top_k == 1 or cfg.temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / max(cfg.temperature, 1e-6)
    probs = torch.softmax(filter_logits(logits, cfg.top_k if cfg.top_k > 1 else 0, cfg.top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate_tokens(model, prompt: torch.Tensor, grid, num_tokens: int, sampling: SamplingConfig = SamplingConfig(),
                    context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Continue `prompt` [B, P] (positions 0..P-1 of the grid's layout) by `num_tokens` tokens."""
    from cosmos_nemo.models.ar.model import make_inference_context

    model.eval()
    batch, length = prompt.shape
    generator = torch.Generator(device=prompt.device).manual_seed(sampling.seed)
    # Only the last position's logits are needed: no [B, prompt, vocab] tensor for long prompts.
    ctx = make_inference_context(batch, length + num_tokens, last_token_only=True)
    extra = {} if context is None else {"context": context, "context_mask": context_mask}
    logits = model(prompt, grid=grid, inference_context=ctx, **extra)
    ctx.sequence_len_offset += length
    out = [prompt]
    for i in range(num_tokens):
        token = sample_next(logits[:, -1, : model.ar_config.output_vocab_size or logits.shape[-1]], sampling, generator)
        out.append(token[:, None])
        if i + 1 == num_tokens:
            break
        logits = model(token[:, None], grid=grid, inference_context=ctx, **extra)
        ctx.sequence_len_offset += 1
    return torch.cat(out, dim=1)


def video_to_uint8(video: torch.Tensor) -> np.ndarray:
    """Tokenizer output [1, 3, T, H, W] in [-1, 1] -> uint8 [T, H, W, 3] (the reference's (x+1)/2 clamp)."""
    x = ((video[0].float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).contiguous().cpu().numpy()


@torch.no_grad()
def continue_clip(model, tokenizer, frames, context_frames: int, sampling: SamplingConfig = SamplingConfig()):
    """Encode a clip (uint8 [T, H, W, 3], T = 1 + k*t), keep the latent frames that cover its first
    `context_frames` frames, generate the rest of the grid, and decode.

    Returns (generated uint8 frames [T, H, W, 3], tokenizer reconstruction of the full clip, grid, the
    number of context tokens).
    """
    from cosmos_nemo.data_prep.clips import frames_to_tokenizer_input
    from cosmos_nemo.tokenizers.grid import check_frames, latent_grid

    if model.ar_config.video2world:
        raise ValueError("continue_clip drives base models; a Video2World model also needs text embeddings")
    grid = latent_grid(frames.shape[0], frames.shape[1], frames.shape[2], tokenizer.compression)
    context_latents = check_frames(context_frames, tokenizer.compression)
    if context_latents >= grid.T:
        raise ValueError(f"{context_frames} context frames cover all {grid.T} latent frames: nothing left to generate")
    video = frames_to_tokenizer_input(frames[None])
    indices = tokenizer.encode(video)  # [1, T, H, W]
    tokens = indices.reshape(1, -1).long()
    prompt_len = context_latents * grid.H * grid.W
    out = generate_tokens(model, tokens[:, :prompt_len], tuple(grid), tokens.shape[1] - prompt_len, sampling)
    generated = tokenizer.decode(out.reshape(indices.shape))
    recon = tokenizer.decode(indices)
    return video_to_uint8(generated), video_to_uint8(recon), grid, prompt_len
