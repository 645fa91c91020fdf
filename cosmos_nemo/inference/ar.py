"""AR generation: continue a video's tokens with the KV-cached model, then decode them to frames.

Sampling follows the NeMo/megatron reference controller: logits / temperature; `top_k > 1` keeps the k
largest, else `0 < top_p < 1` keeps the smallest set of tokens whose probability reaches top_p
(nucleus); softmax; one multinomial draw. `top_k == 1` is greedy. Generation runs the same model the
trainer trains (no second model): a prefill over the context tokens, then one token at a time through
megatron's static KV cache, with 3D RoPE positions taken from the clip's latent grid.

Unlike the reference scripts, nothing is hard-coded to a 5x40x64 grid: the grid comes from the clip, and
the context is a whole number of latent frames of it.

Video2World (5B/13B and their tiny twin) generates in the layout it was trained on (data/loader.py): the
sequence is `[BOV] + clip`, the prompt is BOV plus the context latent frames, and every position attends
to the clip's text through the cross-attention. The text is encoded once per clip, by the same steps
`prepare v2w` uses for the training data (`encode_text`: the same encoder and token count, the embeddings
rounded to bf16 as stored, then read back as float32 with their mask, as the loader does). The
cross-attention K/V of the text are computed once, at the prefill, and kept in the KV cache
(`CosmosCrossAttention`); decoding steps project only their query.

Seeds: row i of a batch draws from its own generator seeded `seeds[i]` (by default `sampling.seed + i`;
the CLI uses `--seed + k` for record k of the input), so a clip's tokens do not depend on which other clips
share its batch: running record k alone with `--seed S+k` gives the tokens it got in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

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


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, generator=None) -> torch.Tensor:
    """One token per row of `logits` [B, V]. `generator`: one torch.Generator for all rows, or a sequence
    of B generators, one per row (each row's draw then depends only on its own logits and generator)."""
    if cfg.top_k == 1 or cfg.temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / max(cfg.temperature, 1e-6)
    probs = torch.softmax(filter_logits(logits, cfg.top_k if cfg.top_k > 1 else 0, cfg.top_p), dim=-1)
    if isinstance(generator, (list, tuple)):
        if len(generator) != probs.shape[0]:
            raise ValueError(f"{len(generator)} generators for {probs.shape[0]} rows")
        return torch.cat([torch.multinomial(probs[i : i + 1], 1, generator=g) for i, g in enumerate(generator)]).squeeze(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def row_generators(seeds: Sequence[int], device) -> list[torch.Generator]:
    """One generator per batch row, seeded `seeds[i]`."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


@torch.no_grad()
def generate_tokens(model, prompt: torch.Tensor, grid, num_tokens: int, sampling: SamplingConfig = SamplingConfig(),
                    context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                    seeds: Sequence[int] | None = None, progress: bool = False) -> torch.Tensor:
    """Continue `prompt` [B, P] (positions 0..P-1 of the grid's layout) by `num_tokens` tokens, with the
    KV cache. Video2World: `context` [B, Lc, D] text embeddings and `context_mask` [B, Lc] (True = attend),
    as in training. Row i samples with a generator seeded `seeds[i]` (default `sampling.seed + i`).
    `progress`: a progress bar (tokens, rate, ETA) on stderr."""
    from cosmos_nemo.models.ar.model import make_inference_context

    model.eval()
    batch, length = prompt.shape
    seeds = [sampling.seed + i for i in range(batch)] if seeds is None else list(seeds)
    if len(seeds) != batch:
        raise ValueError(f"{len(seeds)} seeds for a batch of {batch}")
    generator = row_generators(seeds, prompt.device)
    # Only the last position's logits are needed: no [B, prompt, vocab] tensor for long prompts.
    ctx = make_inference_context(batch, length + num_tokens, last_token_only=True)
    extra = {} if context is None else {"context": context, "context_mask": context_mask}
    logits = model(prompt, grid=grid, inference_context=ctx, **extra)
    ctx.sequence_len_offset += length
    out = [prompt]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=num_tokens, desc=f"generating {batch} clip(s)", unit="token", dynamic_ncols=True)
    for i in range(num_tokens):
        token = sample_next(logits[:, -1, : model.ar_config.output_vocab_size or logits.shape[-1]], sampling, generator)
        out.append(token[:, None])
        if bar is not None:
            bar.update(1)
        if i + 1 == num_tokens:
            break
        logits = model(token[:, None], grid=grid, inference_context=ctx, **extra)
        ctx.sequence_len_offset += 1
    if bar is not None:
        bar.close()
    return torch.cat(out, dim=1)


def video_to_uint8(video: torch.Tensor) -> np.ndarray:
    """Tokenizer output [1, 3, T, H, W] in [-1, 1] -> uint8 [T, H, W, 3] (the reference's (x+1)/2 clamp)."""
    x = ((video[0].float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).contiguous().cpu().numpy()


# ------------------------------------------------------------------------------------------------------
# Video2World text


def default_text_encoder(cfg) -> str:
    """The text encoder a Video2World model's context width implies: T5-11B for the released 1024-d
    models, the bundled MiniLM for 384-d (the tiny recipes); anything else must be named."""
    by_width = {1024: "t5-11b", 384: "minilm"}
    if cfg.context_dim not in by_width:
        raise ValueError(f"the model's text context is {cfg.context_dim}-d, which names no default text encoder; "
                         "pass --text_encoder (the one `prepare v2w --text_encoder` used for its training data)")
    return by_width[cfg.context_dim]


def load_text_encoder_for(cfg, spec: str | None = None, max_length: int | None = None, device=None):
    """The text encoder of a Video2World model, as `prepare v2w` loads it (float32, on `device`: CUDA when
    present), checked against the model's context width."""
    from cosmos_nemo.tokenizers.text import load_text_encoder

    spec = spec or default_text_encoder(cfg)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    encoder = load_text_encoder(spec, device=device, max_length=max_length)
    if encoder.dim != cfg.context_dim:
        raise ValueError(f"text encoder {encoder.name} gives {encoder.dim}-d embeddings, the model's cross-attention "
                         f"reads {cfg.context_dim}-d; pass the --text_encoder its training data was prepared with")
    return encoder


def encode_text(encoder, prompts: Sequence[str], batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(context float32 [B, L, D], mask bool [B, L]) of `prompts`, one row per prompt, by the steps of
    `prepare v2w`: each distinct prompt is encoded once (in calls of `batch_size`), the embeddings are
    rounded to bf16 (the dataset's storage) and read back as float32 with their mask (the loader's batch)."""
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts to encode")
    distinct = list(dict.fromkeys(prompts))
    embs, masks = [], []
    for i in range(0, len(distinct), batch_size):
        enc = encoder.encode(distinct[i : i + batch_size])
        embs.append(enc.embeddings)
        masks.append(enc.mask)
    table = torch.cat(embs).to(torch.bfloat16)
    mask = torch.cat(masks).bool()
    rows = torch.tensor([distinct.index(p) for p in prompts])
    return table[rows].float().contiguous(), mask[rows].contiguous()


# ------------------------------------------------------------------------------------------------------
# Clips


@dataclass
class Continuation:
    generated: np.ndarray  # uint8 [B, T, H, W, 3]
    reconstruction: np.ndarray  # uint8 [B, T, H, W, 3]: the tokenizer's reconstruction of the input clips
    tokens: torch.Tensor  # [B, T·H·W] video ids (context + generated)
    grid: object  # LatentGrid
    prompt_len: int  # context video tokens (without BOV)


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def continue_clips(model, tokenizer, frames, context_frames: int, sampling: SamplingConfig = SamplingConfig(),
                   context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                   seeds: Sequence[int] | None = None, progress: bool = False) -> Continuation:
    """Encode B clips (uint8 [B, T, H, W, 3], T = 1 + k*t, one shape), keep the latent frames that cover
    their first `context_frames` frames, generate the rest of the grid as one batch, and decode.

    A Video2World model needs `context` [B, L, D] (and `context_mask` [B, L], True = attend): see
    `encode_text`. Its sequence is `[BOV] + clip` as in training, so the prompt is BOV + the context tokens.
    A base model takes no context. Row i samples with the generator seeded `seeds[i]`."""
    from cosmos_nemo.data_prep.clips import frames_to_tokenizer_input
    from cosmos_nemo.tokenizers.grid import check_frames, latent_grid

    cfg = model.ar_config
    frames = np.asarray(frames)
    if frames.ndim != 5:
        raise ValueError(f"frames must be uint8 [B, T, H, W, 3], got shape {frames.shape}")
    batch = frames.shape[0]
    if cfg.video2world:
        if context is None:
            raise ValueError("a Video2World model generates from a text prompt: pass its embeddings as `context` "
                             "(encode_text), on the command line --prompt or --batch_input_path")
        if context.shape[0] != batch:
            raise ValueError(f"{context.shape[0]} text embeddings for {batch} clips")
    elif context is not None:
        raise ValueError("a text prompt was given to a base (non-Video2World) model, which has no text conditioning")
    grid = latent_grid(frames.shape[1], frames.shape[2], frames.shape[3], tokenizer.compression)
    context_latents = check_frames(context_frames, tokenizer.compression)
    if context_latents >= grid.T:
        raise ValueError(f"{context_frames} context frames cover all {grid.T} latent frames: nothing left to generate")
    # one clip per call: a clip's tokens do not depend on its batch (and the encoder's memory stays one clip's)
    indices = torch.cat([tokenizer.encode(frames_to_tokenizer_input(frames[i : i + 1])) for i in range(batch)])  # [B, T, H, W]
    device = _model_device(model)
    tokens = indices.reshape(batch, -1).long().to(device)
    prompt_len = context_latents * grid.H * grid.W
    prompt = tokens[:, :prompt_len]
    extra = {}
    if cfg.video2world:
        bov = torch.full((batch, 1), cfg.bov_token_id, dtype=prompt.dtype, device=device)
        prompt = torch.cat([bov, prompt], dim=1)
        extra = {"context": context.to(device),
                 "context_mask": None if context_mask is None else context_mask.to(device)}
    out = generate_tokens(model, prompt, tuple(grid), tokens.shape[1] - prompt_len, sampling, seeds=seeds,
                          progress=progress, **extra)
    video_ids = out[:, 1:] if cfg.video2world else out
    video_ids = video_ids.reshape(indices.shape).to(indices.device)
    generated = np.stack([video_to_uint8(tokenizer.decode(video_ids[i : i + 1])) for i in range(batch)])
    recon = np.stack([video_to_uint8(tokenizer.decode(indices[i : i + 1])) for i in range(batch)])
    return Continuation(generated, recon, video_ids.reshape(batch, -1).cpu(), grid, prompt_len)


@torch.no_grad()
def continue_clip(model, tokenizer, frames, context_frames: int, sampling: SamplingConfig = SamplingConfig(),
                  context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None):
    """One clip (uint8 [T, H, W, 3]) through `continue_clips`. Returns (generated uint8 frames [T, H, W, 3],
    tokenizer reconstruction of the full clip, grid, the number of context video tokens)."""
    out = continue_clips(model, tokenizer, np.asarray(frames)[None], context_frames, sampling, context, context_mask)
    return out.generated[0], out.reconstruction[0], out.grid, out.prompt_len
