"""AR Video2World generation: the KV-cached, text-conditioned generation equals a full recomputation
without a cache, follows the training layout ([BOV] + clip, cross-attention to the prompt's embedding), encodes
the text (and its cross-attention K/V) once per clip, is batch-invariant under the per-record seed rule, and
the `cosmos-nemo generate --prompt` command writes the mp4 or refuses bad input before writing anything."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cosmos_nemo.inference.ar import SamplingConfig, generate_tokens, row_generators, sample_next

GRID = (3, 2, 3)  # 18 video tokens: BOV + 1 context latent frame (6 tokens) + 12 generated


def _tiny_v2w_model():
    from cosmos_nemo.models.ar.config import ar_config
    from cosmos_nemo.models.ar.model import build_ar_model

    torch.manual_seed(3)
    # A larger init std than the default gives peaked, prompt-dependent distributions at this size.
    return build_ar_model(ar_config("tiny_v2w", init_method_std=0.2)).eval()


def _inputs(batch: int, seed: int = 0):
    """BOV + one latent frame of context ids, and MiniLM-wide text embeddings with a partial mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64000, (batch, GRID[1] * GRID[2]), generator=g)
    prompt = torch.cat([torch.full((batch, 1), 64000), ids], dim=1)
    context = torch.randn(batch, 16, 384, generator=g)
    mask = torch.ones(batch, 16, dtype=torch.bool)
    for b in range(batch):  # prompt b has 9 + b real tokens; the rest are zero, as an encoder leaves them
        mask[b, 9 + b:] = False
        context[b, 9 + b:] = 0
    return prompt, context, mask


def _recompute(model, prompt, context, mask, num_tokens, sampling, seeds):
    """Reference: no KV cache; every step runs the full forward over the whole sequence so far."""
    gens = row_generators(seeds, prompt.device)
    seq = prompt
    with torch.no_grad():
        for _ in range(num_tokens):
            logits = model(seq, grid=GRID, context=context, context_mask=mask)
            seq = torch.cat([seq, sample_next(logits[:, -1], sampling, gens)[:, None]], dim=1)
    return seq


@pytest.mark.parametrize("sampling", [SamplingConfig(top_k=1), SamplingConfig(temperature=1.0, top_p=0.9, seed=11)],
                         ids=["greedy", "nucleus"])
def test_cached_v2w_generation_equals_recomputation_without_cache(single_process, sampling):
    model = _tiny_v2w_model()
    prompt, context, mask = _inputs(2)
    n = GRID[0] * GRID[1] * GRID[2] - (prompt.shape[1] - 1)
    seeds = [sampling.seed, sampling.seed + 1]
    cached = generate_tokens(model, prompt, GRID, n, sampling, context=context, context_mask=mask)
    reference = _recompute(model, prompt, context, mask, n, sampling, seeds)
    assert cached.shape == (2, 1 + 18)
    assert cached.tolist() == reference.tolist()
    assert len(set(cached[0, 7:].tolist())) > 1 and cached[0, 7:].tolist() != cached[1, 7:].tolist()
    if sampling.top_k == 1:
        # The training layout: the loader's tokens are stored[:-1] of [BOV] + clip + PAD (data/loader.py); one
        # teacher-forced forward over them predicts every greedy token from the position before it.
        from cosmos_nemo.data.layout import layout_for

        layout = layout_for(GRID, "video2world", 64)
        stored = torch.tensor([layout.stored_tokens(row[1:].tolist()) for row in cached])
        with torch.no_grad():
            logits = model(stored[:, :-1], grid=GRID, context=context, context_mask=mask)
        assert torch.equal(logits[:, 6:18].argmax(-1), cached[:, 7:])


def test_the_text_conditions_generation(single_process):
    model = _tiny_v2w_model()
    prompt, context, mask = _inputs(1)
    greedy = SamplingConfig(top_k=1)
    a = generate_tokens(model, prompt, GRID, 12, greedy, context=context, context_mask=mask)
    b = generate_tokens(model, prompt, GRID, 12, greedy, context=torch.flip(context, [2]), context_mask=mask)
    assert a.tolist() != b.tolist()


def test_text_kv_projected_once_per_clip(single_process):
    """The cross-attention's K/V projection runs once per layer per clip (at the prefill); each decoding step
    projects only its query."""
    model = _tiny_v2w_model()
    prompt, context, mask = _inputs(2)
    calls = {"kv": 0, "q": 0}
    hooks = []
    for layer in model.decoder.layers:
        hooks.append(layer.cross_attention.linear_kv.register_forward_hook(lambda *a: calls.__setitem__("kv", calls["kv"] + 1)))
        hooks.append(layer.cross_attention.linear_q.register_forward_hook(lambda *a: calls.__setitem__("q", calls["q"] + 1)))
    try:
        generate_tokens(model, prompt, GRID, 12, SamplingConfig(seed=4), context=context, context_mask=mask)
    finally:
        for h in hooks:
            h.remove()
    layers = len(model.decoder.layers)
    assert calls["kv"] == layers  # one clip batch: once per layer
    assert calls["q"] == layers * 12  # the prefill + 11 decoding steps (the 12th token is never fed)


@pytest.mark.medium
def test_batch_of_two_equals_each_alone(single_process):
    """Row i draws from its own generator seeded seeds[i]: a clip's tokens do not depend on its batch."""
    model = _tiny_v2w_model()
    prompt, context, mask = _inputs(2, seed=5)
    sampling = SamplingConfig(temperature=1.0, top_p=0.9, seed=20)
    both = generate_tokens(model, prompt, GRID, 12, sampling, context=context, context_mask=mask)
    first = generate_tokens(model, prompt[:1], GRID, 12, sampling, context=context[:1], context_mask=mask[:1])
    second = generate_tokens(model, prompt[1:], GRID, 12, sampling, context=context[1:], context_mask=mask[1:],
                             seeds=[21])
    assert both[0].tolist() == first[0].tolist()
    assert both[1].tolist() == second[0].tolist()
    # The same prompt twice in a batch with the default seeds (seed, seed + 1) samples two different clips.
    twice = generate_tokens(model, prompt[:1].repeat(2, 1), GRID, 12, sampling, context=context[:1].repeat(2, 1, 1),
                            context_mask=mask[:1].repeat(2, 1))
    assert twice[0].tolist() == first[0].tolist() and twice[1].tolist() != twice[0].tolist()


def test_generation_text_matches_prepare_v2w_embeddings(tmp_path):
    """`encode_text` gives exactly the context a `prepare v2w` dataset feeds training (its bf16 embedding
    table and mask, through the loader's float32 batch)."""
    from cosmos_nemo.data_prep.settings import V2WConfig
    from cosmos_nemo.data_prep.v2w import _embedder
    from cosmos_nemo.inference.ar import encode_text, load_text_encoder_for
    from cosmos_nemo.models.ar.config import ar_config

    prompts = ["a robot arm picks up a red cube", "a car drives through rain at night", "a robot arm picks up a red cube"]
    distinct = list(dict.fromkeys(prompts))
    cfg = V2WConfig(input_jsonl=tmp_path / "x.jsonl", output_dir=tmp_path / "out", text_encoder="minilm",
                    prompt_length=16, progress=False)
    table, table_mask = _embedder(distinct, cfg, "cpu")(tmp_path)
    encoder = load_text_encoder_for(ar_config("tiny_v2w"), None, max_length=16, device="cpu")
    assert encoder.name == "all-MiniLM-L6-v2"  # the 384-d model's default, the tiny recipes' offline encoder
    context, mask = encode_text(encoder, prompts)
    rows = [distinct.index(p) for p in prompts]
    assert context.dtype == torch.float32 and context.shape == (3, 16, 384)
    assert torch.equal(context, table[rows].float()) and torch.equal(mask, table_mask[rows].bool())
    with pytest.raises(ValueError, match="--text_encoder"):
        load_text_encoder_for(ar_config("tiny_v2w", context_dim=768), "minilm", max_length=16, device="cpu")


# ------------------------------------------------------------------------------------------------------
# The command


def _v2w_run(root, name="tiny_v2w", **overrides):
    """A run folder as training leaves it (config.yaml, a complete checkpoint of random-init weights with its
    optimizer state), written by the trainer's own checkpoint code."""
    from cosmos_nemo import parallel
    from cosmos_nemo.checkpoint.run import save_checkpoint, write_run_files
    from cosmos_nemo.models.ar.config import ar_config
    from cosmos_nemo.models.ar.model import build_ar_model
    from cosmos_nemo.training.config import OptimizerConfig
    from cosmos_nemo.training.harness import build_optimizer, wrap_model

    cfg = ar_config(name, init_method_std=0.2, **overrides)
    torch.manual_seed(0)
    parallel.setup()
    try:
        chunks = wrap_model(lambda pre, post: build_ar_model(cfg, pre, post))
        save_checkpoint(root / "checkpoints", 10, chunks, build_optimizer(chunks, OptimizerConfig()), {},
                        {"iteration": 10}, {})
    finally:
        parallel.teardown()
    write_run_files(root, {"model": cfg}, {})
    return root


def _videos(folder, n=2):
    from cosmos_nemo.io.video import write_mp4

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        base = rng.integers(0, 255, (1, 32, 48, 3))
        frames = np.clip(base + np.arange(9)[:, None, None, None] * 8 * (i + 1), 0, 255).astype(np.uint8)
        paths.append(write_mp4(folder / f"clip{i}.mp4", frames, fps=8))
    return paths


def _args(run, *extra):
    # tiny tokenizer: 4x8x8 -> 9 frames of 32x48 are a 3x4x6 grid; 1 input frame = 1 latent frame of context
    return ["generate", "--ar_model_dir", str(run), "--encoder_path", "tiny", "--width", "48", "--height", "32",
            "--num_context_frames", "9", "--num_input_frames", "1", "--fps", "8", *extra]


def _frames(path):
    from cosmos_nemo.io.video import read_frames

    return read_frames(path)


@pytest.mark.slow
def test_cli_generates_from_a_prompt_and_a_batch(tmp_path, capsys, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("cpu_only: compares CPU generations across runs")
    from cosmos_nemo.cli import main
    from cosmos_nemo.tokenizers.text import TextEncoder

    torch.set_num_threads(2)
    run = _v2w_run(tmp_path / "run")
    videos = _videos(tmp_path / "videos")
    calls = []
    original = TextEncoder.encode
    monkeypatch.setattr(TextEncoder, "encode", lambda self, prompts: calls.append(list(prompts)) or original(self, prompts))

    jsonl = tmp_path / "batch.jsonl"
    jsonl.write_text("".join(json.dumps({"prompt": p, "visual_input": f"videos/clip{i}.mp4"}) + "\n"
                             for i, p in enumerate(["a teal robot", "a red car in the rain"])))
    assert main(_args(run, "--batch_input_path", str(jsonl), "--video_save_folder", str(tmp_path / "batch"),
                      "--seed", "7", "--temperature", "1.0", "--top_p", "0.9")) == 0
    out = capsys.readouterr().out
    assert "2 clip(s) in one batch" in out and "24 context tokens, 48 generated" in out
    assert calls == [["a teal robot", "a red car in the rain"]]  # the text is encoded once for the batch
    batch = [_frames(tmp_path / "batch" / f"{k}.mp4") for k in range(2)]
    assert all(f.shape == (9, 32, 48, 3) for f in batch)
    assert (tmp_path / "batch" / "0.png").is_file()

    # record 1 alone with --seed 7 + 1 gives the clip it got in the batch; another prompt changes it
    single = tmp_path / "single.mp4"
    assert main(_args(run, "--input_image_or_video_path", str(videos[1]), "--prompt", "a red car in the rain",
                      "--seed", "8", "--temperature", "1.0", "--top_p", "0.9", "--video_save_name", str(single))) == 0
    assert calls[-1] == ["a red car in the rain"]
    np.testing.assert_array_equal(_frames(single), batch[1])
    other = tmp_path / "other.mp4"
    assert main(_args(run, "--input-image-or-video-path", str(videos[1]), "--prompt", "snow falls on a quiet forest",
                      "--seed", "8", "--temperature", "1.0", "--top-p", "0.9", "--video-save-name", str(other),
                      "--tokenizer_compression_factor", "4,8,8", "--decoder_path", "tiny",
                      "--disable_diffusion_decoder")) == 0  # the reference video2world.py command line (seed 003)
    assert not np.array_equal(_frames(other), batch[1])
    # --batch-size 1 splits the jsonl into batches of one clip: the same clips (seed + k per record)
    assert main(_args(run, "--batch_input_path", str(jsonl), "--video_save_folder", str(tmp_path / "split"),
                      "--seed", "7", "--temperature", "1.0", "--top_p", "0.9", "--batch-size", "1")) == 0
    assert "2 batches of up to 1" in capsys.readouterr().out
    for k in range(2):
        np.testing.assert_array_equal(_frames(tmp_path / "split" / f"{k}.mp4"), batch[k])


@pytest.mark.slow
def test_cli_refuses_bad_prompt_input_and_writes_nothing(tmp_path, capsys):
    from cosmos_nemo.cli import main

    torch.set_num_threads(2)
    v2w = _v2w_run(tmp_path / "v2w")
    base = _v2w_run(tmp_path / "base", name="tiny")
    (video,) = _videos(tmp_path / "videos", n=1)
    out = tmp_path / "out" / "x.mp4"

    def refused(args, *fragments):
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err
        for f in fragments:
            assert f in err, err
        assert not out.exists() and not out.with_suffix(".png").exists()
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())

    common = ["--input_image_or_video_path", str(video), "--video_save_name", str(out)]
    refused(_args(v2w, *common), "Video2World model", "--prompt")
    refused(_args(base, *common, "--prompt", "a teal robot"), "base model", "drop --prompt")
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text(json.dumps({"prompt": "a teal robot", "visual_input": str(video)}) + "\n"
                     + json.dumps({"visual_input": str(video)}) + "\n")
    refused(_args(v2w, "--batch_input_path", str(jsonl), "--video_save_folder", str(tmp_path / "out")),
            'give every line of --batch_input_path a "prompt"', "[1]")
    refused(_args(v2w, *common, "--prompt", "x", "--text_encoder", "minilm", "--prompt_length", "8",
                  "--batch_input_path", str(jsonl)), "give one or the other")
    bad_width = _v2w_run(tmp_path / "wide", context_dim=768)
    refused(_args(bad_width, *common, "--prompt", "a teal robot"), "768-d", "--text_encoder")


def test_prompt_length_and_encoder_default_to_the_runs_training_text(tmp_path):
    """Without --prompt_length / --text_encoder the text is cut to the length of the embeddings the run trained on,
    and encoded by the encoder `prepare v2w` recorded in their dataset.json."""
    import json

    import yaml

    from cosmos_nemo.data.ar_dataset import write_text_embeddings
    from cosmos_nemo.inference.commands import _training_text

    run = tmp_path / "run"
    run.mkdir()
    assert _training_text(str(run)) == (None, None)  # no config.yaml: the encoder's own defaults apply
    data = tmp_path / "data"
    write_text_embeddings(data, torch.randn(2, 12, 384), torch.ones(2, 12, dtype=torch.bool))
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"paths": [str(data)]}}))
    assert _training_text(str(run)) == (12, None)  # embeddings without a dataset.json: the length only
    (data / "dataset.json").write_text(json.dumps({"text_encoder": "/models/my-encoder"}))
    assert _training_text(str(run)) == (12, "/models/my-encoder")
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"paths": [str(tmp_path)]}}))  # a folder of datasets
    assert _training_text(str(run)) == (12, "/models/my-encoder")
    other = tmp_path / "other"
    write_text_embeddings(other, torch.randn(1, 12, 384), torch.ones(1, 12, dtype=torch.bool))
    (other / "dataset.json").write_text(json.dumps({"text_encoder": "minilm"}))
    assert _training_text(str(run)) == (12, None)  # two datasets that disagree: no default from them
