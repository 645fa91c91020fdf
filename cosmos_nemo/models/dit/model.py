"""The Cosmos DiT as a megatron model: `DiTModel` (diffusion_models.md §1.2).

    x [B, C, T, H, W] (+ condition-mask channel for Video2World, + nearest-resized padding mask)
      -> patches (1, 2, 2), `b c (t r) (h m) (w n) -> (t h w) b (c r m n)` -> patch_embed (no bias)
    timesteps -> [cos | sin] sinusoid s -> emb = t_norm(s) (RMSNorm), adaln_lora = t_embedder(s) (D -> D -> 3D)
    blocks (megatron `TransformerBlock` of `DiTLayer`s, models/dit/layer.py) with the 3D RoPE table of
      the batch's grid (and Predict1's learnable position embedding at every block)
    final: LayerNorm modulated by (final_adaln(emb) + adaln_lora[:, :2D]) -> final_linear
      -> unpatchify `(t h w) b (p1 p2 r C) -> b C (t r) (h p1) (w p2)` (the reference's order, which is
      not the inverse of the patch order)

Everything position-dependent is computed from the batch's token grid at run time (any frame count and
resolution). Predict2/2.5 take one timestep per latent frame (`timesteps` [B, T]); Predict2.5 scales them
by `timestep_scale`, projects 100352-d text tokens to 1024 (`text_proj`, Linear + GELU; `crossattn_proj` in the released files) and computes
the timestep embedding and the final layer in float32. Predict1's log-variance head (`logvar`) is part of
the model (its weights are in the released `model.pt`) and is evaluated by the EDM loss (`log_variance`).

Tensor parallelism comes from megatron's parallel linears inside the blocks; the embeddings and the final
layer are small and replicated. Context parallelism (GPU, Transformer Engine attention) splits the tokens
by whole latent frames over the CP ranks and gathers the output. Pipeline parallelism is refused (the
timestep embedding feeds every block).
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer.enums import ModelType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_block import TransformerBlock
from torch import nn

from cosmos_nemo.models.dit.config import DiTModelConfig
from cosmos_nemo.models.dit.embeddings import FourierFeatures, LearnablePosEmb, rope_angles, timestep_sinusoid
from cosmos_nemo.models.dit.layer import AdaLNModulation, dit_layer_spec, modulated_norm

FloatLike = Union[float, int, torch.Tensor]


class TimestepEmbedder(nn.Module):
    """`linear_2(SiLU(linear_1(s)))`: the shared adaLN-LoRA term [.., 3D] from the sinusoid s (no biases)."""

    def __init__(self, hidden_size: int, dtype: torch.dtype):
        super().__init__()
        self.linear_1 = nn.Linear(hidden_size, hidden_size, bias=False, dtype=dtype)
        self.linear_2 = nn.Linear(hidden_size, 3 * hidden_size, bias=False, dtype=dtype)

    def forward(self, s: torch.Tensor, fp32: bool = False) -> torch.Tensor:
        if fp32:
            return F.linear(F.silu(F.linear(s.float(), self.linear_1.weight.float())), self.linear_2.weight.float())
        return self.linear_2(F.silu(self.linear_1(s)))


class LogVarHead(nn.Module):
    """Predict1's `logvar`: `Linear(128 -> 1, no bias)(FourierFeatures(128)(c_noise))`."""

    def __init__(self, channels: int, dtype: torch.dtype):
        super().__init__()
        self.fourier = FourierFeatures(channels)
        self.linear = nn.Linear(channels, 1, bias=False, dtype=dtype)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        features = self.fourier(c_noise.reshape(-1)).to(self.linear.weight.dtype)
        return self.linear(features).reshape(*c_noise.shape, 1) if c_noise.dim() else self.linear(features)


class DiTModel(MegatronModule):
    """One rank's Cosmos DiT (see the module docstring)."""

    def __init__(self, cfg: DiTModelConfig, config, pre_process: bool = True, post_process: bool = True,
                 vp_stage: Optional[int] = None):
        super().__init__(config=config)
        if not (pre_process and post_process):
            raise ValueError("the DiT does not support pipeline parallelism (use tensor, context and data parallelism)")
        self.dit_config = cfg
        self.model_type = ModelType.encoder_or_decoder
        self.share_embeddings_and_output_weights = False
        self.pre_process, self.post_process = pre_process, post_process
        dtype = config.params_dtype
        d = cfg.hidden_size
        self.patch_embed = nn.Linear(cfg.patch_in_features, d, bias=False, dtype=dtype)
        self.t_embedder = TimestepEmbedder(d, dtype)
        self.t_norm = nn.RMSNorm(d, eps=cfg.norm_eps, dtype=dtype)
        self.learnable_pos_emb = LearnablePosEmb(d, cfg.max_size, dtype) if cfg.extra_pos_emb else None
        self.text_proj = (nn.Sequential(nn.Linear(cfg.crossattn_proj_in, cfg.context_dim, bias=True, dtype=dtype),
                                             nn.GELU()) if cfg.crossattn_proj_in else None)
        self.decoder = TransformerBlock(
            config=config,
            spec=dit_layer_spec(cfg.use_te, fp32_rope=cfg.qk_fp32_rope, adaln_lora_dim=cfg.adaln_lora_dim,
                                context_dim=cfg.context_dim),
            post_layer_norm=False,
            pre_process=True,
            post_process=True,
            vp_stage=vp_stage,
        )
        self.final_adaln = AdaLNModulation(d, cfg.adaln_lora_dim, 2, config)
        self.final_linear = nn.Linear(d, cfg.patch_out_features, bias=False, dtype=dtype)
        self.logvar = LogVarHead(cfg.logvar_channels, dtype) if cfg.logvar_head else None
        if config.perform_initialization:
            for linear in (self.patch_embed, self.t_embedder.linear_1, self.t_embedder.linear_2, self.final_linear):
                config.init_method(linear.weight)
            if self.text_proj is not None:
                config.init_method(self.text_proj[0].weight)
                nn.init.zeros_(self.text_proj[0].bias)
            if self.learnable_pos_emb is not None:
                for table in (self.learnable_pos_emb.pos_emb_t, self.learnable_pos_emb.pos_emb_h,
                              self.learnable_pos_emb.pos_emb_w):
                    config.init_method(table)
            if self.logvar is not None:
                config.init_method(self.logvar.linear.weight)
        self._rope_cache: dict = {}

    # ----------------------------------------------------------------------------------------------
    def set_input_tensor(self, input_tensor) -> None:
        """megatron's schedules call this on every model; a DiT is never a later pipeline stage."""
        tensors = input_tensor if isinstance(input_tensor, (list, tuple)) else [input_tensor]
        if any(t is not None for t in tensors):
            raise ValueError("the DiT does not support pipeline parallelism: it got activations from a previous stage")

    def _cp(self) -> tuple[int, int, object]:
        if self.config.context_parallel_size == 1:
            return 0, 1, None
        from megatron.core import parallel_state

        return (parallel_state.get_context_parallel_rank(), parallel_state.get_context_parallel_world_size(),
                parallel_state.get_context_parallel_group())

    def rope_table(self, grid: tuple[int, int, int], fps: Optional[FloatLike], device) -> torch.Tensor:
        cfg = self.dit_config
        fps_value = None
        if cfg.rope_fps_modulation and fps is not None:
            fps_value = float(torch.as_tensor(fps).reshape(-1)[0])
        key = (grid, fps_value, str(device))
        if key not in self._rope_cache:
            if len(self._rope_cache) > 16:
                self._rope_cache.clear()
            self._rope_cache[key] = rope_angles(grid, cfg.head_dim, cfg.rope_scale, fps_value, cfg.base_fps,
                                                cfg.rope_theta, device=device)
        return self._rope_cache[key]

    # ----------------------------------------------------------------------------------------------
    def _check_inputs(self, x, timesteps, context, condition_mask, padding_mask):
        cfg = self.dit_config
        if x.dim() != 5:
            raise ValueError(f"x must be latents [B, C, T, H, W], got shape {tuple(x.shape)}")
        B, C, T, H, W = x.shape
        if C != cfg.latent_channels:
            raise ValueError(f"latents have {C} channels, but the {cfg.name!r} DiT takes {cfg.latent_channels} "
                             "(check the VAE: Cosmos CV8x8x8 and Wan2.1 latents have 16)")
        if T % cfg.patch_temporal or H % cfg.patch_spatial or W % cfg.patch_spatial:
            raise ValueError(f"latent frames x height x width {T}x{H}x{W} must be divisible by the patch size "
                             f"{cfg.patch_temporal}x{cfg.patch_spatial}x{cfg.patch_spatial}")
        if condition_mask is not None:
            if not cfg.video2world:
                raise ValueError(f"the {cfg.name!r} DiT is a Text2World model: it has no condition-mask channel "
                                 "(use a Video2World model for conditional frames)")
            if condition_mask.shape != (B, 1, T, H, W):
                raise ValueError(f"condition_mask must be [B, 1, T, H, W] = {(B, 1, T, H, W)}, got "
                                 f"{tuple(condition_mask.shape)}")
        if padding_mask is not None and (padding_mask.dim() != 4 or padding_mask.shape[1] != 1
                                         or padding_mask.shape[0] not in (1, B)):
            raise ValueError(f"padding_mask must be [B or 1, 1, H_px, W_px], got {tuple(padding_mask.shape)}")
        width = cfg.crossattn_proj_in or cfg.context_dim
        if context.dim() != 3 or context.shape[0] != B or context.shape[2] != width:
            raise ValueError(f"context must be text embeddings [B={B}, L, {width}], got {tuple(context.shape)}")
        if timesteps.dim() == 5:  # [B, 1, T, 1, 1], the diffusers convention
            timesteps = timesteps.reshape(timesteps.shape[0], -1)
        if timesteps.dim() == 0:
            timesteps = timesteps.expand(B)
        if timesteps.dim() == 1:
            if timesteps.shape[0] != B:
                raise ValueError(f"timesteps [B] must have B = {B} entries, got {timesteps.shape[0]}")
            if cfg.per_frame_timesteps:
                timesteps = timesteps[:, None].expand(B, T // cfg.patch_temporal)
        elif timesteps.dim() == 2:
            if not cfg.per_frame_timesteps:
                raise ValueError(f"the {cfg.name!r} DiT takes one timestep per sample ([B]), got {tuple(timesteps.shape)}")
            if timesteps.shape != (B, T // cfg.patch_temporal):
                raise ValueError(f"per-frame timesteps must be [B, T] = {(B, T // cfg.patch_temporal)}, got "
                                 f"{tuple(timesteps.shape)}")
        else:
            raise ValueError(f"timesteps must be [B], [B, T] or [B, 1, T, 1, 1], got {tuple(timesteps.shape)}")
        return timesteps

    def patchify(self, x, condition_mask=None, padding_mask=None) -> torch.Tensor:
        """Model input tokens `[T'*H'*W', B, in_features]` of latents x [B, C, T, H, W]."""
        cfg = self.dit_config
        B, _, T, H, W = x.shape
        parts = [x]
        if cfg.video2world:
            parts.append(condition_mask if condition_mask is not None else x.new_zeros(B, 1, T, H, W))
        if cfg.concat_padding_mask:
            if padding_mask is None:
                pad = x.new_zeros(B, 1, H, W)
            else:
                pad = F.interpolate(padding_mask.to(x.dtype), size=(H, W), mode="nearest").expand(B, 1, H, W)
            parts.append(pad.unsqueeze(2).expand(B, 1, T, H, W))
        x = torch.cat(parts, dim=1)
        r, p = cfg.patch_temporal, cfg.patch_spatial
        C = x.shape[1]
        x = x.reshape(B, C, T // r, r, H // p, p, W // p, p)
        x = x.permute(2, 4, 6, 0, 1, 3, 5, 7)  # t h w b | c r m n
        return x.reshape((T // r) * (H // p) * (W // p), B, C * r * p * p)

    def unpatchify(self, out: torch.Tensor, grid: tuple[int, int, int], batch: int) -> torch.Tensor:
        """`[(t h w), B, (p1 p2 r C)]` -> `[B, C, T*r, H*p1, W*p2]` (the reference's order)."""
        cfg = self.dit_config
        Tt, Ht, Wt = grid
        r, p = cfg.patch_temporal, cfg.patch_spatial
        out = out.reshape(Tt, Ht, Wt, batch, p, p, r, cfg.out_channels)
        out = out.permute(3, 7, 0, 6, 1, 4, 2, 5)  # b C t r h p1 w p2
        return out.reshape(batch, cfg.out_channels, Tt * r, Ht * p, Wt * p)

    def time_embedding(self, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(emb, adaln_lora) of timesteps [B] or [B, T]: the normalised sinusoid and the shared adaLN-LoRA term."""
        cfg = self.dit_config
        s = timestep_sinusoid(timesteps.float() * cfg.timestep_scale, cfg.hidden_size)
        dtype = self.config.params_dtype
        if cfg.fp32_time_and_final:
            lora = self.t_embedder(s, fp32=True)
            emb = F.rms_norm(s, (cfg.hidden_size,), self.t_norm.weight.float(), cfg.norm_eps)
            return emb.to(dtype), lora.to(dtype)
        s = s.to(dtype)
        return self.t_norm(s), self.t_embedder(s)

    def log_variance(self, c_noise: torch.Tensor) -> torch.Tensor:
        """Predict1's learned log-variance u(c_noise) [B] (EDM loss weighting)."""
        if self.logvar is None:
            raise ValueError(f"the {self.dit_config.name!r} DiT has no log-variance head (logvar_head=false)")
        return self.logvar(c_noise.reshape(-1)).reshape(-1)

    # ----------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                fps: Optional[FloatLike] = None, padding_mask: Optional[torch.Tensor] = None,
                condition_mask: Optional[torch.Tensor] = None, return_hidden: bool = False):
        """x [B, C, T, H, W] latents (already scaled by the objective's c_in); timesteps [B] (Predict1) or
        [B, T] / [B] (Predict2/2.5, one per latent frame); context [B, L, context_dim] text tokens ([B, L,
        crossattn_proj_in] for Predict2.5); fps (Predict1 RoPE modulation, the first sample's value as in
        the reference); padding_mask [B or 1, 1, H_px, W_px] (zeros when None); condition_mask [B, 1, T, H, W]
        for Video2World (zeros = no conditional frames when None).

        Returns the prediction [B, out_channels, T, H, W]; with `return_hidden`, also a dict of hidden
        states `[B, T', H', W', D]` after the patch embedding ("x_embedder") and after each block ("block{i}")."""
        cfg = self.dit_config
        timesteps = self._check_inputs(x, timesteps, context, condition_mask, padding_mask)
        B, _, T, H, W = x.shape
        grid = (T // cfg.patch_temporal, H // cfg.patch_spatial, W // cfg.patch_spatial)
        dtype = self.config.params_dtype
        hidden = self.patch_embed(self.patchify(x.to(dtype), condition_mask, padding_mask))
        emb, adaln_lora = self.time_embedding(timesteps.to(x.device))
        rope = self.rope_table(grid, fps, x.device)
        extra = self.learnable_pos_emb(grid).to(dtype) if self.learnable_pos_emb is not None else None
        if self.text_proj is not None:
            context = self.text_proj(context.to(dtype))
        context = context.to(dtype).transpose(0, 1).contiguous()  # [L, B, context_dim]

        cp_rank, cp_size, cp_group = self._cp()
        if cp_size > 1:
            if grid[0] % cp_size:
                raise ValueError(f"context parallel size {cp_size} must divide the {grid[0]} latent frames")
            frames = grid[0] // cp_size
            tokens = frames * grid[1] * grid[2]
            keep = slice(cp_rank * tokens, (cp_rank + 1) * tokens)
            hidden, rope = hidden[keep], rope[keep]
            extra = extra[keep] if extra is not None else None
            if emb.dim() == 3:
                emb = emb[:, cp_rank * frames:(cp_rank + 1) * frames]
                adaln_lora = adaln_lora[:, cp_rank * frames:(cp_rank + 1) * frames]

        hiddens = {}
        if return_hidden:
            hiddens["x_embedder"] = hidden
        recompute = self.config.recompute_granularity == "full" and self.training
        for i, layer in enumerate(self.decoder.layers):
            if recompute:
                def run(h, e, ctx, lora, rot, pe, layer=layer):
                    return layer(h, emb=e, context=ctx, adaln_lora=lora, rotary_pos_emb=rot, extra_pos_emb=pe)

                hidden = tensor_parallel.checkpoint(run, self.config.distribute_saved_activations, hidden, emb,
                                                    context, adaln_lora, rope, extra)
            else:
                hidden = layer(hidden, emb=emb, context=context, adaln_lora=adaln_lora, rotary_pos_emb=rope,
                               extra_pos_emb=extra)
            if return_hidden:
                hiddens[f"block{i}"] = hidden

        out = self.final_layer(hidden, emb, adaln_lora)
        if cp_size > 1:
            import torch.distributed.nn.functional as dist_fn

            out = torch.cat(dist_fn.all_gather(out, group=cp_group), dim=0)
            hiddens = {k: torch.cat(dist_fn.all_gather(v, group=cp_group), dim=0) for k, v in hiddens.items()}
        output = self.unpatchify(out, grid, B)
        if not return_hidden:
            return output
        return output, {k: v.reshape(*grid, B, -1).permute(3, 0, 1, 2, 4) for k, v in hiddens.items()}

    def final_layer(self, hidden: torch.Tensor, emb: torch.Tensor, adaln_lora: torch.Tensor) -> torch.Tensor:
        cfg = self.dit_config
        d = cfg.hidden_size
        if cfg.fp32_time_and_final:
            mod = F.linear(F.linear(F.silu(emb.float()), self.final_adaln.down.weight.float()),
                           self.final_adaln.up.weight.float()) + adaln_lora.float()[..., : 2 * d]
            shift, scale = mod.chunk(2, dim=-1)
            h = modulated_norm(hidden.float(), shift, scale, cfg.norm_eps)
            return F.linear(h, self.final_linear.weight.float()).to(self.config.params_dtype)
        shift, scale = self.final_adaln(emb, adaln_lora)
        return self.final_linear(modulated_norm(hidden, shift, scale, cfg.norm_eps))


def build_dit_model(cfg: DiTModelConfig, pre_process: Optional[bool] = None, post_process: Optional[bool] = None,
                    dtype: torch.dtype = torch.float32, vp_stage: Optional[int] = None,
                    **transformer_overrides) -> DiTModel:
    """Build the model for this rank (megatron parallel state must be initialised, e.g. by
    `cosmos_nemo.parallel.setup`)."""
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        raise RuntimeError("initialise the parallel state first: cosmos_nemo.parallel.setup(tensor_parallel=...)")
    config = cfg.transformer_config(dtype=dtype, **transformer_overrides)
    if config.context_parallel_size > 1 and not torch.cuda.is_available():
        raise ValueError("context parallelism of the DiT needs GPUs with Transformer Engine attention; on a CPU use "
                         "tensor and data parallelism (context_parallel=1)")
    model = DiTModel(cfg, config, pre_process=pre_process is not False, post_process=post_process is not False,
                     vp_stage=vp_stage)
    return model.to(dtype) if dtype != torch.float32 else model


def count_parameters(cfg: DiTModelConfig) -> int:
    """Total parameters at TP=1, counted on the meta device (nothing is allocated)."""
    from megatron.core import parallel_state

    from cosmos_nemo import parallel

    own_state = not parallel_state.model_parallel_is_initialized()
    if own_state:
        parallel.setup()
    elif parallel_state.get_tensor_model_parallel_world_size() != 1:
        raise RuntimeError("count_parameters counts the whole model: call it where TP = 1")
    try:
        with torch.device("meta"):
            model = build_dit_model(cfg, perform_initialization=False, use_cpu_initialization=True)
        return sum(p.numel() for p in model.parameters())
    finally:
        if own_state:
            parallel.teardown()
