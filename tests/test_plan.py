"""`cosmos-nemo plan` (recipes/plan.py): per-GPU memory of a recipe and the smallest layout that fits.

- The parameter formulas equal the families' exact meta-device counters.
- The 4B AR recipe and the 7B DiT recipe at 8 GPUs x 80 GiB equal a hand computation written out below.
- The activation estimate (megatron's local kernels, as they run on this CPU) matches the bytes a tiny
  recipe's forward pass saves for the backward (sum of the saved tensors' storages, each counted once)
  within 20 %, with and without full recompute.
- Overrides apply before planning; the suggestion follows the stated rule; the LoRA hook; the command's
  help and its errors (exit status, no traceback).
"""

from __future__ import annotations

import pytest

from cosmos_nemo import cli
from cosmos_nemo.recipes import plan as P

GIB = 2**30


# --------------------------------------------------------------------------------------------------
# parameters


def test_parameter_formulas_equal_the_exact_counters():
    from cosmos_nemo.models.ar.config import ar_config
    from cosmos_nemo.models.ar.model import count_parameters as ar_count
    from cosmos_nemo.models.dit.config import dit_config
    from cosmos_nemo.models.dit.model import count_parameters as dit_count

    for name in ("4b", "tiny", "tiny_v2w"):  # the tiny configs cover the Video2World and Predict2.5 branches
        cfg = ar_config(name)
        assert P.ar_parameters(cfg).total == ar_count(cfg), name
    for name in ("predict1_7b_v2w", "tiny_predict1_v2w", "tiny_predict25"):
        cfg = dit_config(name)
        assert P.dit_parameters(cfg).total == dit_count(cfg), name


# --------------------------------------------------------------------------------------------------
# the released recipes by hand


def test_4b_ar_recipe_by_hand():
    plan = P.plan_recipe("cosmos_ar_4b_finetune", gpus=8, gpu_mem_gib=80)
    # Cosmos 4B: h 4096, 32 heads / 8 groups of 128 (q 4096, kv 1024), SwiGLU 14336, 16 layers, 64,000 rows.
    h, q, kv, f, d_h, layers, vocab = 4096, 4096, 1024, 14336, 128, 16, 64000
    layer_split = h * (q + 2 * kv) + q * h + 3 * f * h  # fused QKV, output projection, fc1 (2f), fc2
    layer_replicated = 2 * h + 2 * d_h  # two RMSNorms, q/k RMSNorms
    total = layers * (layer_split + layer_replicated) + vocab * h + h + vocab * h
    assert total == 4_014_088_192 == plan.parameters
    # The recipe: TP=2 (DP 4 on 8 GPUs), bf16, micro-batch 2 of 5x40x64 = 12,800 tokens, no recompute.
    c = plan.chosen
    assert (c.layout.tp, c.layout.pp, c.layout.cp, c.layout.dp) == (2, 1, 1, 4)
    per_rank = layers * (layer_split / 2 + layer_replicated) + vocab * h / 2 + vocab * h / 2 + h
    assert per_rank == 2_007_113_728 == c.parameters
    assert c.bytes["parameters"] == 2 * per_rank  # bf16 weights
    assert c.bytes["gradients"] == 4 * per_rank  # fp32 gradient buffer (grad_reduce_in_fp32)
    assert c.bytes["optimizer"] == 12 * per_rank  # fp32 main weights + Adam m, v (no distributed optimizer)
    assert c.bytes["ema"] == 0
    # Activations, elements per token of one layer (Transformer Engine kernels): replicated over TP the norm
    # input and output of attention and MLP (4h); split by TP the q copy (GQA), the fused QKV output, rotated q,
    # k, attention output (4q + 3kv) and SwiGLU input + fc2 input (3f).
    tokens = 2 * 12_800
    per_token = 4 * h + (4 * q + 3 * kv + 3 * f) / 2
    layer_bytes = 2 * tokens * per_token
    assert layer_bytes == 2_437_939_200 == c.layer_bytes
    head = 2 * tokens * 2 * h + 4 * tokens * vocab / 2  # final norm (bf16), fp32 softmax of this rank's vocabulary
    activations = layers * layer_bytes + head
    assert c.bytes["activations"] == pytest.approx(activations, rel=1e-12)
    assert c.total == pytest.approx(18 * per_rank + activations, rel=1e-12)
    assert round(c.total / GIB, 2) == 73.42  # > 72 GiB (80 GiB less 10 % headroom): does not fit
    # The smallest layout that fits: TP=4 (DP 2).
    g = plan.suggestion
    assert (g.layout.tp, g.layout.pp, g.layout.cp, g.layout.dp, g.settings.recompute) == (4, 1, 1, 2, None)
    per_rank4 = layers * (layer_split / 4 + layer_replicated) + 2 * vocab * h / 4 + h
    act4 = layers * 2 * tokens * (4 * h + (4 * q + 3 * kv + 3 * f) / 4) + 2 * tokens * 2 * h + 4 * tokens * vocab / 4
    assert g.total == pytest.approx(18 * per_rank4 + act4, rel=1e-12)
    assert round(g.total / GIB, 2) == 43.16


def test_7b_dit_recipe_by_hand():
    plan = P.plan_recipe("cosmos_predict1_7b_v2w_finetune", gpus=8, gpu_mem_gib=80)
    # Predict1 7B V2W: h 4096, 32 heads of 128, MLP 4h, 28 blocks, adaLN-LoRA 256, text 1024, patch input
    # (16 + condition + padding mask) x 2 x 2 = 72, output 16 x 4 = 64, position tables 128 + 120 + 120 rows.
    h, q, f, r, c, d_h, layers = 4096, 4096, 16384, 256, 1024, 128, 28
    layer_split = h * 3 * q + q * h + (h * q + c * 2 * q + q * h) + 2 * f * h  # self-attn, cross-attn, MLP
    layer_replicated = 4 * d_h + 3 * (h * r + r * 3 * h)  # q/k norms of both attentions, three adaLN-LoRA
    outside = (72 * h + 4 * h * h + h + (h * r + r * 2 * h) + h * 64 + (128 + 120 + 120) * h + 128)
    total = layers * (layer_split + layer_replicated) + outside
    assert total == 7_236_208_768 == plan.parameters
    # The recipe (TP=1, DP=8, no recompute) cannot fit; the suggestion is TP=4 with full recompute (DP 2).
    assert plan.chosen.total > plan.budget
    g = plan.suggestion
    assert (g.layout.tp, g.layout.pp, g.layout.cp, g.layout.dp, g.settings.recompute) == (4, 1, 1, 2, "full")
    per_rank = layers * (layer_split / 4 + layer_replicated) + outside
    assert per_rank == 2_127_546_496 == g.parameters
    # bf16 weights 2 + fp32 gradients 4 + fp32 main weights and Adam m, v 12 + fp32 EMA 4 (power EMA on) = 22 B.
    assert g.bytes["parameters"] + g.bytes["gradients"] + g.bytes["optimizer"] + g.bytes["ema"] == 22 * per_rank
    # Activations: micro-batch 1 of the 121x704x1280 clip, latent 16x88x160 -> 16x44x80 = 56,320 tokens, 512
    # text tokens, bf16. Full recompute keeps each block's input (h per token) and, in the backward, one
    # block's whole set: per token 12h replicated (each sublayer's LayerNorm input, normalised and modulated x,
    # gated output) + (6q self + 3q cross + 2f MLP) / TP; per text token 3q / TP; per sample 3(4h + r).
    S, L = 16 * 44 * 80, 512
    one_block = 2 * (S * (12 * h + (6 * q + 3 * q + 2 * f) / 4) + L * 3 * q / 4 + 3 * (4 * h + r))
    assert one_block == 7_500_563_968 == g.layer_bytes
    inputs = layers * 2 * S * h
    # outside the blocks: patch-embedding input, Predict1's position embedding, the text, the final layer's 3h
    outside_act = 2 * (S * 72 + S * h + L * c + S * 3 * h)
    activations = inputs + outside_act + one_block
    assert g.bytes["activations"] == pytest.approx(activations, rel=1e-12)
    assert g.total == pytest.approx(22 * per_rank + activations, rel=1e-12)
    assert round(g.total / GIB, 2) == 64.34


# --------------------------------------------------------------------------------------------------
# activations against a measured CPU run


def _saved_bytes(model, forward) -> int:
    """Bytes of the tensors the forward saves for the backward, each storage once (parameters excluded)."""
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params and storage.nbytes():
            seen.setdefault(storage.data_ptr(), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()  # kept alive while counting: no saved storage is freed and its address reused
    total = sum(seen.values())
    del out
    return total


def _measure(plan: P.Plan, latent=None) -> int:
    import torch

    cfg, w, b = plan.model, plan.workload, plan.workload.micro_batch
    if cfg.family == "ar":
        from cosmos_nemo.models.ar.model import build_ar_model

        model = build_ar_model(cfg).train()
        tokens = torch.randint(0, cfg.output_vocab_size, (b, w.tokens))
        labels = torch.randint(0, cfg.output_vocab_size, (b, w.tokens))
        context = torch.randn(b, w.text_length, cfg.context_dim) if cfg.video2world else None
        return _saved_bytes(model, lambda: model(tokens, cfg.max_grid, context=context, labels=labels))
    from cosmos_nemo.models.dit.model import build_dit_model

    model = build_dit_model(cfg).train()
    x = torch.randn(b, cfg.latent_channels, *latent)
    context = torch.randn(b, w.text_length, cfg.crossattn_proj_in or cfg.context_dim)
    return _saved_bytes(model, lambda: model(x, torch.rand(b), context, fps=24.0))


@pytest.mark.medium
def test_activation_estimate_matches_a_measured_cpu_forward(monkeypatch):
    import torch
    from megatron.core import parallel_state

    from cosmos_nemo import parallel

    # megatron's own loss path (the fused CPU loss keeps its workspace outside autograd's saved tensors)
    monkeypatch.setenv("COSMOS_NEMO_CPU_ACCELERATIONS", "0")
    own = not parallel_state.model_parallel_is_initialized()
    if own:
        parallel.setup()
    torch.manual_seed(0)
    cases = [("cosmos_ar_tiny_finetune", [], None, None),
             ("cosmos_ar_tiny_finetune", ["model.recompute_granularity=full"], None, None),
             ("cosmos_ar_tiny_v2w_finetune", [], None, None),
             ("cosmos_predict1_tiny_v2w_finetune", [], (4, 16, 16), 32),
             ("cosmos_predict1_tiny_v2w_finetune", ["model.recompute_granularity=full"], (4, 16, 16), 32)]
    report = []
    try:
        for name, overrides, latent, text in cases:
            # megatron's local kernels, which are what runs here (model.use_te=false)
            plan = P.plan_recipe(name, 1, 80, ("model.use_te=false", *overrides), latent=latent, text_length=text)
            estimated = plan.chosen.bytes["activations"]
            if plan.settings.recompute == "full":
                estimated -= plan.chosen.layer_bytes  # the recomputed block lives in the backward only
            measured = _measure(plan, latent)
            report.append(f"{name} {overrides}: measured {measured / 1e6:.3f} MB, estimated {estimated / 1e6:.3f} MB")
            assert abs(estimated / measured - 1) < 0.20, report[-1]
    finally:
        if own:
            parallel.teardown()
    print("\n".join(report))


def test_kernel_sets_differ_only_by_the_documented_terms():
    from cosmos_nemo.models.ar.config import ar_config
    from cosmos_nemo.models.dit.config import dit_config

    cfg = ar_config("4b")
    h, q, kv, f, d_h = 4096, 4096, 1024, 14336, 128
    te, local = P.ar_layer_activations(cfg, te=True), P.ar_layer_activations(cfg, te=False)
    # local: + x*rstd of the two block norms (2h) and of q/k norms (q + kv), SDPA's GQA copies of k and v
    # (q - kv and q), SwiGLU unfused (2f), RoPE cos/sin tables (4 d_h per position)
    assert local.token - te.token == 2 * h
    assert local.token_tp - te.token_tp == (q + kv) + (q - kv) + q + 2 * f
    assert (te.position, local.position) == (0, 4 * d_h)
    d = dit_config("predict1_7b_v2w")
    te, local = P.dit_layer_activations(d, te=True), P.dit_layer_activations(d, te=False)
    assert local.token_tp - te.token_tp == 2 * 4096 + 4096  # q/k x*rstd (self), q x*rstd (cross)
    assert local.text_tp - te.text_tp == 4096  # k x*rstd (cross)


# --------------------------------------------------------------------------------------------------
# overrides, layouts, the LoRA hook


def test_overrides_apply_before_planning():
    overrides = ("parallel.tensor=4", "trainer.precision=fp32", "model.recompute_granularity=full",
                 "data.micro_batch_size=1")
    plan = P.plan_recipe("cosmos_ar_4b_finetune", 8, 80, overrides)
    c = plan.chosen
    assert (c.layout.tp, c.layout.dp) == (4, 2)
    assert (plan.settings.precision, plan.settings.recompute, plan.workload.micro_batch) == ("fp32", "full", 1)
    assert c.bytes["parameters"] == 4 * c.parameters and c.bytes["optimizer"] == 8 * c.parameters  # fp32: m, v
    tokens, h = 12_800, 4096
    stored = 16 * 4 * tokens * h + 4 * tokens * 2 * h + 4 * tokens * 64000 / 4  # layer inputs + final norm + softmax
    assert c.bytes["activations"] == pytest.approx(stored + c.layer_bytes, rel=1e-12)
    # sequence parallelism splits the replicated terms too
    sp = P.plan_recipe("cosmos_ar_4b_finetune", 8, 80, ("model.extra_transformer_config={sequence_parallel: true}",))
    assert sp.settings.sequence_parallel and sp.chosen.layer_bytes == pytest.approx(
        2 * 2 * tokens * (4 * h + 4 * 4096 + 3 * 1024 + 3 * 14336) / 2, rel=1e-12)


def test_layout_order_and_validity():
    from cosmos_nemo.models.ar.config import ar_config
    from cosmos_nemo.models.dit.config import dit_config

    w = P.Workload(tokens=12_800, micro_batch=2, global_batch=32)
    ar = [(x.tp, x.pp, x.cp) for x in P.candidate_layouts(P.ModelMemory(ar_config("4b")), 8, w)]
    assert ar == [(1, 1, 1), (2, 1, 1), (1, 2, 1), (4, 1, 1), (2, 2, 1), (1, 4, 1), (8, 1, 1), (4, 2, 1),
                  (2, 4, 1), (1, 8, 1)]  # smallest TP x PP x CP first, then fewest PP (AR: no CP)
    dw = P.Workload(tokens=56_320, micro_batch=1, global_batch=8, text_length=512, frames=16)
    dit = [(x.tp, x.pp, x.cp) for x in P.candidate_layouts(P.ModelMemory(dit_config("predict1_7b_v2w")), 8, dw)]
    assert dit[:4] == [(1, 1, 1), (2, 1, 1), (1, 1, 2), (4, 1, 1)] and all(pp == 1 for _, pp, _ in dit)
    # the global batch must split over DP: global 4 of micro 2 allows DP 1 or 2 only
    small = P.Workload(tokens=12_800, micro_batch=2, global_batch=4)
    assert {x.dp for x in P.candidate_layouts(P.ModelMemory(ar_config("4b")), 8, small)} == {1, 2}
    # 1F1B: the first of 4 stages keeps 4 micro-batches of its 4 layers, the last one micro-batch + the head
    m = P.ModelMemory(ar_config("4b"))
    plan = m.memory(P.Layout(1, 4, 1, 2), w, P.Settings())
    assert (plan.stage, plan.in_flight) == (0, 4)


def test_lora_counts_only_the_adapters():
    full = P.plan_recipe("cosmos_ar_4b_finetune", 8, 80)
    # peft=lora (the override the trainer takes) with the AR LoRA targets: rank 32 on q, k, v, output, fc1, fc2
    lora = P.plan_recipe("cosmos_ar_4b_finetune", 8, 80,
                         ("peft=lora", "peft.targets=[linear_qkv,linear_proj,linear_fc1,linear_fc2]"))
    h, q, kv, f, r = 4096, 4096, 1024, 14336, 32
    per_layer = r * ((h + q) + 2 * (h + kv) + (q + h) + (h + 2 * f) + (f + h))  # A [r, in] + B [out, r] per pair
    adapters = 16 * per_layer
    assert adapters == 39_845_888 == lora.settings.trainable_params
    share = lora.chosen.parameters / lora.parameters  # adapters spread over the ranks like the base
    c = lora.chosen
    assert c.bytes["parameters"] == pytest.approx(2 * c.parameters + 4 * adapters * share)  # frozen bf16 + fp32
    assert c.bytes["gradients"] == pytest.approx(4 * adapters * share)
    assert c.bytes["optimizer"] == pytest.approx(8 * adapters * share)  # fp32 adapters: Adam m, v, no main copy
    assert c.bytes["activations"] == full.chosen.bytes["activations"]
    # the hook given directly
    direct = P.plan_recipe("cosmos_ar_4b_finetune", 8, 80, trainable_params=adapters)
    assert direct.chosen.bytes == c.bytes
    # a target that matches nothing is a message
    with pytest.raises(P.PlanError, match="unknown LoRA target"):
        P.plan_recipe("cosmos_ar_4b_finetune", 8, 80, ("peft=lora", "peft.targets=[nothing]"))


# --------------------------------------------------------------------------------------------------
# the command


def test_plan_command_output(capsys):
    assert cli.main(["plan", "cosmos_ar_4b_finetune", "--gpus", "8", "--gpu-mem", "80"]) == 0
    out = capsys.readouterr().out
    assert "chosen layout TP=2 PP=1 CP=1 DP=4" in out and "73.42 GiB  DOES NOT FIT" in out
    assert "suggested: TP=4 PP=1 CP=1 DP=2" in out
    assert "cosmos-nemo train cosmos_ar_4b_finetune parallel.tensor=4 parallel.pipeline=1 parallel.context=1" in out
    assert cli.main(["plan", "cosmos_predict1_7b_v2w_finetune", "trainer.precision=bf16", "--gpus", "8",
                     "--gpu-mem", "80", "--all"]) == 0
    out = capsys.readouterr().out
    assert "suggested: TP=4 PP=1 CP=1 DP=2" in out and "model.recompute_granularity=full" in out
    assert "every valid layout, recompute full" in out and "trainer.precision=bf16" in out


def test_plan_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["plan", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--gpus", "--gpu-mem", "--headroom", "--latent", "--text-length", "--trainable-params",
                 "--recipe-arg", "--all", "KEY=VALUE"):
        assert flag in out, flag
    assert "smallest TP x PP x CP" in out


@pytest.mark.parametrize("argv, status, message", [
    (["cosmos_ar_4x_finetune", "--gpus", "8", "--gpu-mem", "80"], 2, "unknown recipe 'cosmos_ar_4x_finetune'"),
    (["cosmos_ar_4b_finetune", "--gpus", "3", "--gpu-mem", "80"], 2, "3 GPUs are not divisible by TP x PP x CP"),
    (["cosmos_ar_4b_finetune", "--gpus", "8", "--gpu-mem", "80", "parallel.tensr=2"], 2, "closest valid key"),
    (["cosmos_ar_4b_finetune", "--gpus", "6", "--gpu-mem", "80", "parallel.tensor=3"], 2, "must divide"),
    (["cosmos_predict1_7b_v2w_finetune", "--gpus", "8", "--gpu-mem", "80", "parallel.pipeline=2"], 2,
     "pipeline parallelism"),
    (["cosmos_ar_4b_finetune", "--gpus", "8", "--gpu-mem", "4"], 1, "does not fit on 8 GPU(s)"),
])
def test_plan_errors_are_messages(capsys, argv, status, message):
    assert cli.main(["plan", *argv]) == status
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err + captured.out
