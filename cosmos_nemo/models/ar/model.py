"""The Cosmos AR model: a megatron `GPTModel` whose positions come from each batch's latent grid.

`CosmosARModel` keeps megatron's embedding, decoder (`TransformerBlock` of spec-built layers), output
layer, vocab-parallel cross-entropy, `set_input_tensor` (pipeline schedules) and sharded state dict
(dist-ckpt). It is built with `position_embedding_type="none"` and computes, at every forward:

- the 3D RoPE angles of the grid (models/common/rope.py), passed to the decoder as megatron's
  `rotary_pos_emb` (the non-fused rotate-half path in megatron's attention);
- for Video2World, the sin/cos absolute PE of the grid, added to the hidden state at the input of every
  layer, and the text context for the cross-attention.

Both are explicit forward inputs (`grid`, `context`), never smuggled through `packed_seq_params`.
Video2World sequences are `[BOV] + clip + [PAD]...`, so their tables start with one zero row (identity
rotation, no abs-PE) and end with zero rows up to a multiple of 64.

Generation uses megatron's `StaticInferenceContext` as the KV cache (`make_inference_context`): the
caller advances `sequence_len_offset` after each call, as with any megatron model. The same model object
serves training and generation.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from megatron.core import tensor_parallel
from megatron.core.models.common.embeddings.language_model_embedding import LanguageModelEmbedding
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.utils import make_viewless_tensor

from cosmos_nemo.models.ar.config import ARModelConfig
from cosmos_nemo.models.ar.spec import ar_layer_spec
from cosmos_nemo.models.common.embeddings import abs_pos_emb_3d
from cosmos_nemo.models.common.linear_ce import TokenLoss, linear_cross_entropy
from cosmos_nemo.models.common.rope import rope_3d_angles
from cosmos_nemo.parallel import cpu_adapter
from cosmos_nemo.tokenizers.grid import LatentGrid

GridArg = Union[LatentGrid, Sequence[int], torch.Tensor, Sequence[Sequence[int]]]


def _plain(value):
    """Nested python ints from tensors, numpy arrays/scalars, tuples and lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def batch_grid(grid: GridArg, batch_size: Optional[int] = None) -> LatentGrid:
    """One LatentGrid for a batch: a (T,H,W), or per-sample grids [B, 3] that must all be equal (a batch
    holds clips of one grid; the sampler groups by grid)."""
    if isinstance(grid, LatentGrid):
        return grid
    values = _plain(grid)
    if isinstance(values, list) and len(values) == 3 and all(isinstance(v, int) for v in values):
        return LatentGrid.of(values)
    if not isinstance(values, list) or not values or not all(isinstance(v, list) for v in values):
        raise ValueError(f"grid must be (T, H, W) or per-sample [[T, H, W], ...], got {grid!r}")
    grids = {LatentGrid.of(g) for g in values}
    if len(grids) != 1:
        raise ValueError(f"a batch must hold clips of one latent grid, got {sorted(map(str, grids))}")
    if batch_size is not None and len(values) != batch_size:
        raise ValueError(f"got {len(values)} per-sample grids for a batch of {batch_size}")
    return grids.pop()


def make_inference_context(batch_size: int, max_sequence_length: int, last_token_only: bool = False):
    """A megatron static KV cache for generation. After each `model(...)` call with it, advance
    `ctx.sequence_len_offset` by the number of tokens fed."""
    from megatron.core.inference.contexts import StaticInferenceContext

    ctx = StaticInferenceContext(max_batch_size=batch_size, max_sequence_length=max_sequence_length)
    ctx.materialize_only_last_token_logits = last_token_only  # megatron-core 0.16
    if getattr(ctx, "config", None) is not None:  # megatron-core >= 0.19 reads it from the context's config
        ctx.config.materialize_only_last_token_logits = last_token_only
    return ctx


def _inference_mode(inference_context):
    """megatron-core >= 0.19 applies inference-only behaviour (last-token logits) while its process-wide
    `InferenceMode` is active; 0.16 reads the context alone. Active for calls with a KV cache."""
    from contextlib import nullcontext

    if inference_context is None:
        return nullcontext()
    try:
        from megatron.core.inference.utils import InferenceMode
    except ImportError:  # megatron-core 0.16
        return nullcontext()
    return nullcontext() if InferenceMode.is_active() else InferenceMode.active()


class CosmosARModel(GPTModel):
    def __init__(
        self,
        cfg: ARModelConfig,
        config: TransformerConfig,
        pre_process: bool = True,
        post_process: bool = True,
        vp_stage: Optional[int] = None,
    ):
        super().__init__(
            config=config,
            transformer_layer_spec=ar_layer_spec(cfg.video2world, cfg.context_dim, cfg.use_te),
            vocab_size=cfg.output_vocab_size,
            max_sequence_length=cfg.seq_length,
            pre_process=pre_process,
            post_process=post_process,
            parallel_output=True,
            share_embeddings_and_output_weights=False,
            position_embedding_type="none",
            vp_stage=vp_stage,
        )
        if config.context_parallel_size > 1:
            # The grid tables would need megatron's per-CP-rank sequence slicing; not wired up yet.
            raise ValueError("context parallelism is not supported by the Cosmos AR model yet; use TP/PP/DP")
        self.ar_config = cfg
        if pre_process and cfg.vocab_size != cfg.output_vocab_size:
            # V2W embeds the BOV token (64000) in a table rounded up to 64064 rows, while the output
            # head predicts only the 64000 video ids (the reference's expand_vocab without the output).
            self.embedding = LanguageModelEmbedding(
                config=config,
                vocab_size=cfg.vocab_size,
                max_sequence_length=cfg.seq_length,
                position_embedding_type="none",
                tp_group=self.pg_collection.tp,
            )
        self._table_cache: dict = {}

    # ----------------------------------------------------------------------------------------------
    # Position tables from the grid
    def position_tables(self, grid: LatentGrid, device) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(RoPE angles [L, 1, 1, head_dim] float32, abs-PE [L, 1, hidden] or None) for the grid's layout."""
        key = (grid.as_tuple(), str(device))
        if key not in self._table_cache:
            cfg = self.ar_config
            layout = cfg.layout(grid)
            rope = rope_3d_angles(grid, cfg.head_dim, cfg.rope_theta, cfg.yarn, layout.num_prefix,
                                  layout.input_length, device=device)
            abs_pe = None
            if cfg.video2world:
                table_dtype = getattr(torch, cfg.abs_pos_emb_dtype)
                abs_pe = abs_pos_emb_3d(grid, cfg.hidden_size, layout.num_prefix, layout.input_length,
                                        table_dtype=table_dtype, device=device)[:, None, :]
            if len(self._table_cache) > 16:
                self._table_cache.clear()
            self._table_cache[key] = (rope, abs_pe)
        return self._table_cache[key]

    # ----------------------------------------------------------------------------------------------
    def forward(self, *args, inference_context=None, **kwargs) -> torch.Tensor:
        """See `_forward`; calls with a KV cache run in megatron's inference mode (megatron-core >= 0.19)."""
        with _inference_mode(inference_context):
            return self._forward(*args, inference_context=inference_context, **kwargs)

    def _forward(
        self,
        tokens: Optional[torch.Tensor],
        grid: GridArg,
        context: Optional[torch.Tensor] = None,
        context_mask: Optional[torch.Tensor] = None,
        inference_context=None,
        labels: Optional[torch.Tensor] = None,
        gather_output: Optional[bool] = None,
        decoder_input: Optional[torch.Tensor] = None,
        loss_stats: bool = False,
        with_lse: bool = False,
    ) -> torch.Tensor:
        """tokens [B, L] (absolute positions `offset .. offset+L-1` of the grid's layout, offset from the
        inference context); grid (T,H,W) of the batch; context [B, Lc, context_dim] text embeddings and
        optional context_mask [B, Lc] (True = attend) for Video2World.

        Returns logits [B, L, V] (gathered over TP unless `gather_output=False`), or with `labels` [B, L]
        the per-token vocab-parallel cross-entropy [B, L] (megatron style: the caller applies its loss
        mask). With `labels` and `loss_stats=True`, a `TokenLoss(ce, lse, hit)` of [B, L] tensors instead
        (cross-entropy, logsumexp of the logits for a z-loss, whether the label is the top-1 prediction; on
        the logits path lse is computed only with `with_lse=True`, else empty). At TP=1 in training
        the loss comes from the fused output-projection + cross-entropy (models/common/linear_ce.py), which
        never materialises the logits; elsewhere from the logits. On a pipeline stage without the output
        layer, the hidden states [L, B, hidden]. `context_mask` may also be given as [B, 1, 1, Lc]."""
        cfg = self.ar_config
        offset = inference_context.sequence_len_offset if inference_context is not None else 0
        if tokens is not None:
            batch, length = tokens.shape
        elif decoder_input is not None:
            length, batch = decoder_input.shape[:2]
        else:  # a later pipeline stage: the activations came through set_input_tensor
            length, batch = self.decoder.input_tensor.shape[:2]
            if self.config.sequence_parallel:
                length *= self.config.tensor_model_parallel_size
        g = batch_grid(grid, batch)
        layout = cfg.layout(g)
        if offset + length > layout.input_length:
            raise ValueError(
                f"positions {offset}..{offset + length - 1} exceed the {layout.input_length}-token layout of a "
                f"{g} grid ({'1 BOV + ' if layout.num_prefix else ''}{g.num_tokens} video tokens"
                f"{' + PAD' if layout.num_prefix else ''})"
            )

        if tokens is not None:
            device = tokens.device
        else:
            device = (decoder_input if decoder_input is not None else self.decoder.input_tensor).device
        rope, abs_pe = self.position_tables(g, device)
        if inference_context is not None and not self.training:
            # megatron's static KV cache slices q rows [offset:offset+L] and k rows [:offset+L] itself.
            rotary = rope[: offset + length]
        else:
            rotary = rope[offset : offset + length]

        if self.pre_process and decoder_input is None:
            self._check_tokens(tokens)
            decoder_input = self.embedding(input_ids=tokens, position_ids=None)

        extra = {}
        if cfg.video2world:
            if context is None:
                raise ValueError("a Video2World model needs `context` (text embeddings [B, Lc, context_dim])")
            if context.shape[-1] != cfg.context_dim:
                raise ValueError(f"context width {context.shape[-1]} != model context_dim {cfg.context_dim}")
            extra["context"] = context.transpose(0, 1).to(self.config.params_dtype)
            if context_mask is not None:
                keep = context_mask.to(torch.bool).reshape(context_mask.shape[0], -1)
                if keep.shape != context.shape[:2]:
                    raise ValueError(f"context_mask {tuple(context_mask.shape)} does not match context {tuple(context.shape[:2])}")
                extra["context_mask"] = ~keep[:, None, None, :]  # megatron convention: True = masked out
        elif context is not None:
            raise ValueError("`context` was given to a base (non-Video2World) model")

        if abs_pe is None:
            hidden = self.decoder(
                hidden_states=decoder_input,
                attention_mask=None,
                rotary_pos_emb=rotary,
                inference_context=inference_context,
                **extra,
            )
        else:
            pe = abs_pe[offset : offset + length].to(self.config.params_dtype)
            if self.config.sequence_parallel:
                pe = pe.chunk(self.config.tensor_model_parallel_size, dim=0)[
                    self.pg_collection.tp.rank()
                ]
            hidden = self._decode_with_abs_pe(decoder_input, pe, rotary, inference_context, **extra)

        if not self.post_process:
            return hidden
        if gather_output is None:
            gather_output = labels is None
        if inference_context is not None and not self.training:
            gather_output = True
        if labels is not None:
            return self._token_loss(hidden, labels, inference_context, loss_stats, with_lse)
        return self._postprocess(
            hidden_states=hidden,
            input_ids=tokens,
            position_ids=None,
            labels=labels,
            rotary_pos_emb=rotary,
            rotary_pos_cos=None,
            rotary_pos_sin=None,
            decoder_input=decoder_input,
            runtime_gather_output=gather_output,
            inference_context=inference_context,
        )

    def _fused_loss_applies(self, inference_context) -> bool:
        cfg = self.config
        return (
            cpu_adapter.acceleration("fused_loss")
            and self.pg_collection.tp.size() == 1
            and cfg.mtp_num_layers is None
            and inference_context is None
            and self.output_layer.bias is None
            and not self.share_embeddings_and_output_weights
        )

    def _token_loss(self, hidden: torch.Tensor, labels: torch.Tensor, inference_context, stats: bool, with_lse: bool):
        """Per-token loss [B, L] (or TokenLoss of [B, L] tensors) of the final hidden states [L, B, h]."""
        if self._fused_loss_applies(inference_context):
            length, batch = hidden.shape[:2]
            out = linear_cross_entropy(hidden.reshape(length * batch, -1), self.output_layer.weight,
                                       labels.transpose(0, 1).reshape(-1), want_hit=stats)
            out = TokenLoss(*(t.view(length, batch).transpose(0, 1).contiguous() if t.numel() else t for t in out))
        else:  # megatron's own path: the output layer's forward and its (fused, when configured) cross-entropy
            from .step import logits_token_loss

            def megatron_cross_entropy(logits_sb, labels_sb):  # [L, B, V_local], [L, B] -> [L, B]
                return self.compute_language_model_loss(labels_sb.transpose(0, 1), logits_sb).transpose(0, 1)

            logits, _ = self.output_layer(hidden, runtime_gather_output=False)  # [L, B, V_local]
            out = logits_token_loss(logits, labels.transpose(0, 1), with_lse=stats and with_lse,
                                    cross_entropy=megatron_cross_entropy)
            out = TokenLoss(*(t.transpose(0, 1).contiguous() if t.numel() else t for t in out))
        return out if stats else out.ce

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        """An out-of-range id fails inside the embedding with an index error on the CPU and corrupts memory
        or asserts asynchronously on a GPU. The check costs a host sync, so it runs on CPU tensors only; on
        a GPU the data were checked against the model before training (`data.validate_for_model`)."""
        if tokens.device.type != "cpu":
            return
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= self.ar_config.vocab_size:
            raise ValueError(
                f"token ids must lie in [0, {self.ar_config.vocab_size}) for this model, got [{lo}, {hi}]; "
                "check the tokenizer's vocabulary against the model config (model.resize_vocab)"
            )

    def _decode_with_abs_pe(self, hidden, abs_pe, rotary, inference_context, context=None, context_mask=None):
        """megatron's TransformerBlock loop with the V2W abs-PE added at the input of every layer."""
        block = self.decoder
        if not block.pre_process:
            hidden = block.input_tensor
        hidden = make_viewless_tensor(inp=hidden, requires_grad=True, keep_graph=True)
        recompute = block.config.recompute_granularity == "full" and self.training
        for layer in block.layers:
            hidden = hidden + abs_pe
            if recompute:
                def run(h, ctx, ctx_mask, rot, layer=layer):
                    return layer(hidden_states=h, attention_mask=None, context=ctx, context_mask=ctx_mask,
                                 rotary_pos_emb=rot)
                hidden, context = tensor_parallel.checkpoint(
                    run, block.config.distribute_saved_activations, hidden, context, context_mask, rotary
                )
            else:
                hidden, context = layer(
                    hidden_states=hidden,
                    attention_mask=None,
                    context=context,
                    context_mask=context_mask,
                    rotary_pos_emb=rotary,
                    inference_context=inference_context,
                )
        if block.final_layernorm is not None:
            hidden = block.final_layernorm(hidden)
            hidden = make_viewless_tensor(inp=hidden, requires_grad=True, keep_graph=True)
        return hidden


def build_ar_model(
    cfg: ARModelConfig,
    pre_process: Optional[bool] = None,
    post_process: Optional[bool] = None,
    dtype: torch.dtype = torch.float32,
    vp_stage: Optional[int] = None,
    **transformer_overrides,
) -> CosmosARModel:
    """Build the model for this rank (megatron parallel state must be initialised, e.g. by
    `cosmos_nemo.parallel.setup`). `pre_process`/`post_process` default to this rank's pipeline stage."""
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        raise RuntimeError("initialise the parallel state first: cosmos_nemo.parallel.setup(tensor_parallel=...)")
    if pre_process is None:
        pre_process = parallel_state.is_pipeline_first_stage(ignore_virtual=True)
    if post_process is None:
        post_process = parallel_state.is_pipeline_last_stage(ignore_virtual=True)
    config = cfg.transformer_config(dtype=dtype, **transformer_overrides)
    model = CosmosARModel(cfg, config, pre_process=pre_process, post_process=post_process, vp_stage=vp_stage)
    return model.to(dtype) if dtype != torch.float32 else model


def count_parameters(cfg: ARModelConfig) -> int:
    """Total parameters of the model at TP=1/PP=1, counted on the meta device (nothing is allocated)."""
    from megatron.core import parallel_state

    from cosmos_nemo import parallel

    own_state = not parallel_state.model_parallel_is_initialized()
    if own_state:
        parallel.setup()
    elif parallel_state.get_tensor_model_parallel_world_size() * parallel_state.get_pipeline_model_parallel_world_size() != 1:
        raise RuntimeError("count_parameters counts the whole model: call it where TP = PP = 1")
    try:
        with torch.device("meta"):
            model = build_ar_model(cfg, pre_process=True, post_process=True, perform_initialization=False,
                                   use_cpu_initialization=True)
        return sum(p.numel() for p in model.parameters())
    finally:
        if own_state:
            parallel.teardown()
