"""`prepare text-embeddings` and `prepare latents`: the reference layout in and out, T5 rows against a direct
transformers run, t5_xxl pickles (round trip, refused without --trust-pickle, code never run), latents
against diffusers' AutoencoderKLWan / the Cosmos CV tokenizer called directly with the documented
normalisation, the DiT loader reading the result, 1 vs 2 workers byte-identical, resume after an
interrupted run, and the errors raised before any work."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from cosmos_nemo.data_prep import latents as latents_mod
from cosmos_nemo.data_prep.clips import apply_geometry, geometry
from cosmos_nemo.data_prep.engine import PrepareError
from cosmos_nemo.data_prep.latents import prepare_latents
from cosmos_nemo.data_prep.settings import LatentsConfig, TextEmbeddingsConfig
from cosmos_nemo.data_prep.text_embeddings import _NumpyOnlyUnpickler, load_text_table, prepare_text_embeddings
from cosmos_nemo.io import synthetic as syn
from cosmos_nemo.io.video import read_frames, write_mp4

H, W = 16, 32  # clip size: latent 2 x 4 at 8x spatial compression
CAPTIONS = {"a0": "a red ball bounces", "b1": "two blue balls", "c2": "a red ball bounces", "d3": "a green cube"}
BAD = {"corrupt": "decoding failed", "short": "fewer frames than one clip", "small": "smaller than the target"}


def _write_dataset(root: Path) -> Path:
    (root / "videos").mkdir(parents=True)
    (root / "metas").mkdir()
    for i, stem in enumerate(CAPTIONS):
        write_mp4(root / "videos" / f"{stem}.mp4", syn.pattern_frames(12 if i != 3 else 9, 24, 40, seed=i), fps=10)
        (root / "metas" / f"{stem}.txt").write_text(CAPTIONS[stem] + "\n")
    syn.write_video(root / "videos" / "corrupt.mp4", syn.pattern_frames(12, 32, 48, seed=7))
    syn.corrupt_packet(root / "videos" / "corrupt.mp4")
    write_mp4(root / "videos" / "short.mp4", syn.pattern_frames(3, 24, 40, seed=8), fps=10)
    write_mp4(root / "videos" / "small.mp4", syn.pattern_frames(12, 8, 8, seed=9), fps=10)
    for stem in BAD:
        (root / "metas" / f"{stem}.txt").write_text("a broken video\n")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return _write_dataset(tmp_path_factory.mktemp("dit_data") / "ds")


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory) -> Path:
    """A random-init T5 encoder of T5-XXL's width (1024) with the ByT5 tokenizer (no vocabulary file)."""
    from cosmos_nemo.compat import hide_unusable_torchvision

    hide_unusable_torchvision()
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    folder = tmp_path_factory.mktemp("tiny_t5_1024")
    torch.manual_seed(0)
    config = T5Config(vocab_size=384, d_model=1024, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    T5EncoderModel(config).eval().save_pretrained(folder)
    ByT5Tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def wan_vae(tmp_path_factory) -> Path:
    from cosmos_nemo.data_prep.vae import import_autoencoder_kl_wan

    AutoencoderKLWan = import_autoencoder_kl_wan()
    folder = tmp_path_factory.mktemp("wan_vae")
    torch.manual_seed(0)
    AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                     temperal_downsample=[False, True, True]).save_pretrained(folder)
    return folder


def _cfg(dataset: Path, out: Path, **kw) -> LatentsConfig:
    base = dict(dataset_path=dataset, output_dir=out, num_frames=5, video_size=[H, W], text_encoder="minilm",
                progress=False, decode_threads=1, device="cpu", dtype="float32")
    base.update(kw)
    return LatentsConfig(**base)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _clip(video: Path, start: int, frames: int, step: int = 1) -> np.ndarray:
    src = read_frames(video)
    geo = geometry(src.shape[1], src.shape[2], H, W, "crop")
    return apply_geometry(src[start : start + (frames - 1) * step + 1 : step], geo)


# ------------------------------------------------------------------------------------------------------
# text-embeddings


def test_text_embeddings_t5_rows_match_transformers_and_dedupe(dataset, tiny_t5, tmp_path):
    from transformers import ByT5Tokenizer, T5EncoderModel

    from cosmos_nemo.cli import main as cli_main

    out = tmp_path / "t5.safetensors"
    rc = cli_main(["prepare", "text-embeddings", "--dataset_path", str(dataset), "--text-encoder", str(tiny_t5),
                   "--output", str(out), "--no-progress", "--device", "cpu"])
    assert rc == 0
    table, sources = load_text_table(out)
    distinct = list(dict.fromkeys(open(dataset / "metas" / f"{s}.txt").read().strip() for s in sorted(sources)))
    assert table.prompts == distinct and len(distinct) == 4  # 7 captions; "a red ball bounces" and "a broken video" repeat
    assert sources["a0"] == sources["c2"] and sources["corrupt"] == sources["short"] == sources["small"]
    assert table.embeddings.shape == (4, 512, 1024) and table.embeddings.dtype == torch.float16
    # Independent: ByT5 ids are utf-8 bytes + 3 then </s>; T5 encoder run directly, zero past the true length.
    model = T5EncoderModel.from_pretrained(tiny_t5).eval()
    tok = ByT5Tokenizer()
    for i, prompt in enumerate(table.prompts):
        n = len(prompt.encode()) + 1
        assert table.mask[i].sum().item() == n and table.mask[i, :n].all()
        ids = tok([prompt], padding="max_length", max_length=512, return_tensors="pt")
        with torch.no_grad():
            ref = model(input_ids=ids.input_ids, attention_mask=ids.attention_mask).last_hidden_state[0]
        torch.testing.assert_close(table.embeddings[i, :n].float(), ref[:n].half().float(), rtol=0, atol=1e-3)
        assert table.embeddings[i, n:].abs().max().item() == 0.0
    # A rerun is a no-op; another encoder without --overwrite is refused.
    assert prepare_text_embeddings(TextEmbeddingsConfig(dataset_path=dataset, text_encoder=str(tiny_t5), output=out,
                                                        progress=False, device="cpu")).already_complete
    with pytest.raises(PrepareError, match="--overwrite"):
        prepare_text_embeddings(TextEmbeddingsConfig(dataset_path=dataset, text_encoder="minilm", output=out,
                                                     progress=False, device="cpu"))


def test_t5_pickles_round_trip_and_need_trust(dataset, tiny_t5, tmp_path):
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    computed = tmp_path / "computed.safetensors"
    prepare_text_embeddings(TextEmbeddingsConfig(dataset_path=ds, text_encoder=str(tiny_t5), output=computed,
                                                 write_pickles=True, progress=False, device="cpu"))
    table, sources = load_text_table(computed)
    # The reference layout: one pickle per video, [np.ndarray[n_tokens, 1024] float16], trimmed to the true length.
    for stem, row in sources.items():
        with open(ds / "t5_xxl" / f"{stem}.pickle", "rb") as f:  # the library's numpy-only unpickler
            obj = _NumpyOnlyUnpickler(f).load()
        n = int(table.mask[row].sum())
        assert isinstance(obj, list) and len(obj) == 1 and obj[0].dtype == np.float16 and obj[0].shape == (n, 1024)
        assert np.array_equal(obj[0], table.embeddings[row, :n].numpy())
    # Reading them back needs --trust-pickle, and nothing is written without it.
    converted = tmp_path / "from_pickles.safetensors"
    cfg = dict(dataset_path=ds, text_source="pickles", output=converted, progress=False, device="cpu")
    with pytest.raises(PrepareError, match="--trust-pickle.*arbitrary code"):
        prepare_text_embeddings(TextEmbeddingsConfig(**cfg))
    assert not converted.exists()
    prepare_text_embeddings(TextEmbeddingsConfig(**cfg, trust_pickle=True))
    back, back_sources = load_text_table(converted)
    assert back.prompts == table.prompts and back_sources == sources
    assert torch.equal(back.embeddings, table.embeddings) and torch.equal(back.mask, table.mask)
    # Even trusted, a pickle that calls anything but numpy is refused and its code never runs.
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(ds / "t5_xxl" / "a0.pickle", "wb") as f:
        pickle.dump([Evil()], f)
    with pytest.raises(PrepareError, match="posix.system|os.system|not part of a numpy array"):
        prepare_text_embeddings(TextEmbeddingsConfig(**cfg, trust_pickle=True, overwrite=True))
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------------
# latents


def test_wan_latents_equal_diffusers_and_feed_the_dit_loader(dataset, tiny_t5, wan_vae, tmp_path):
    from cosmos_nemo.data.dit_dataset import DiTDataConfig, DiTLatentDataset, build_dit_dataloaders
    from cosmos_nemo.data_prep.vae import import_autoencoder_kl_wan
    from cosmos_nemo.models.dit.config import dit_config

    out = tmp_path / "lat"
    rep = prepare_latents(_cfg(dataset, out, vae_path=str(wan_vae), text_encoder=str(tiny_t5), sequence_interval=2,
                               start_frame_interval=3))
    assert rep.num_sources == 7 and rep.num_used == 4
    reasons = {s["source"]: s["reason"] for s in rep.skipped}
    for stem, fragment in BAD.items():
        assert fragment in reasons[f"videos/{stem}.mp4"], reasons
    ds = DiTLatentDataset(out)
    # 12-frame videos: clips of 5 frames every 2nd frame span 9 frames, a clip every 3 frames -> starts 0, 3;
    # the 9-frame video has one clip.
    starts = [(r["source"], r["start_frame"]) for r in ds.records]
    assert starts == [("videos/a0.mp4", 0), ("videos/a0.mp4", 3), ("videos/b1.mp4", 0), ("videos/b1.mp4", 3),
                      ("videos/c2.mp4", 0), ("videos/c2.mp4", 3), ("videos/d3.mp4", 0)]
    assert ds.embeddings.shape == (3, 512, 1024)  # 3 distinct captions among the used videos
    assert [r["prompt_id"] for r in ds.records] == [0, 0, 1, 1, 0, 0, 2]
    assert ds.info["vae"]["name"] == "wan2.1" and ds.info["text"]["dim"] == 1024 and ds.info["latent_channels"] == 16
    # Independent: diffusers' VAE on x/127.5 - 1, posterior mean, diffusers' own latents_mean/std.
    vae = import_autoencoder_kl_wan().from_pretrained(wan_vae).eval()
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for doc, rec in enumerate(ds.records):
            clip = _clip(dataset / rec["source"], rec["start_frame"], 5, step=2)
            x = torch.from_numpy(clip).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
            with torch.no_grad():
                mu = vae.encode(x).latent_dist.mean
            ref = ((mu - mean) / std)[0]
            got = ds.latent(doc)
            assert got.shape == (16, 2, 2, 4)
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(old)
    # The DiT family reads it: a 1024-d text model with 16 latent channels.
    train, _, notes = build_dit_dataloaders(DiTDataConfig(paths=[str(out)], split_string="1,0,0", micro_batch_size=2,
                                                          global_batch_size=2), dit_config("tiny_predict2"))
    batch = next(train)
    assert batch["latents"].shape == (2, 16, 2, 2, 4) and batch["context"].shape == (2, 512, 1024)
    assert "7 latent clips" in notes[0]


@pytest.mark.medium
def test_workers_byte_identical_and_resume_after_interruption(dataset, wan_vae, tmp_path, monkeypatch):
    one, two, resumed = tmp_path / "one", tmp_path / "two", tmp_path / "resumed"
    prepare_latents(_cfg(dataset, one, vae_path=str(wan_vae)))
    prepare_latents(_cfg(dataset, two, vae_path=str(wan_vae), workers=2))
    assert _files(one) == _files(two)
    # Interrupt after two videos are committed: no dataset.json, the reader refuses the folder.
    real, calls = latents_mod.process_video, []

    def dying(*args, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(latents_mod, "process_video", dying)
    with pytest.raises(KeyboardInterrupt):
        prepare_latents(_cfg(dataset, resumed, vae_path=str(wan_vae)))
    monkeypatch.setattr(latents_mod, "process_video", real)
    from cosmos_nemo.data.dit_dataset import DiTDatasetError, DiTLatentDataset

    assert not (resumed / "dataset.json").exists()
    with pytest.raises(DiTDatasetError):
        DiTLatentDataset(resumed)
    rep = prepare_latents(_cfg(dataset, resumed, vae_path=str(wan_vae)))
    assert rep.resumed_parts == 2
    assert _files(resumed) == _files(one)
    assert prepare_latents(_cfg(dataset, resumed, vae_path=str(wan_vae))).already_complete


def test_latents_read_t5_pickles_only_with_trust(dataset, wan_vae, tmp_path):
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    (ds / "t5_xxl").mkdir()
    rng = np.random.default_rng(0)
    arrays = {}
    for stem in [*CAPTIONS, *BAD]:
        arrays[stem] = rng.standard_normal((3 + len(stem), 1024)).astype(np.float16)
        with open(ds / "t5_xxl" / f"{stem}.pickle", "wb") as f:
            pickle.dump([arrays[stem]], f)
    out = tmp_path / "lat"
    with pytest.raises(PrepareError, match="--trust-pickle.*arbitrary code"):
        prepare_latents(_cfg(ds, out, vae_path=str(wan_vae)))
    assert not out.exists()
    prepare_latents(_cfg(ds, out, vae_path=str(wan_vae), trust_pickle=True))
    from cosmos_nemo.data.dit_dataset import DiTLatentDataset

    d = DiTLatentDataset(out)
    for doc, rec in enumerate(d.records):
        stem = Path(rec["source"]).stem
        first = min(s for s in CAPTIONS if CAPTIONS[s] == CAPTIONS[stem])  # identical captions share a row
        n = arrays[first].shape[0]
        sample = d.sample(doc)
        assert torch.equal(sample["context"][:n], torch.from_numpy(arrays[first]).float())
        assert sample["context"][n:].abs().max() == 0 and sample["context_mask"].sum() == n
        assert sample["context"].shape == (512, 1024)
    # A missing embedding for a clip: an error naming it, before any work.
    (ds / "t5_xxl" / "b1.pickle").unlink()
    with pytest.raises(PrepareError, match="no t5_xxl/<stem>.pickle for b1"):
        prepare_latents(_cfg(ds, tmp_path / "lat2", vae_path=str(wan_vae), trust_pickle=True, text_source="pickles"))
    assert not (tmp_path / "lat2").exists()


def test_cosmos_cv_latents_use_mean_std_per_channel_and_frame(dataset, tmp_path):
    from cosmos_nemo.data.dit_dataset import DiTLatentDataset
    from cosmos_nemo.tokenizers import load_video_tokenizer

    folder = tmp_path / "tiny_cv"
    load_video_tokenizer("tiny-cv").save(folder)  # 4x8x8, 16 channels, random init with a fixed seed
    t_max = 3
    g = torch.Generator().manual_seed(0)
    mean, std = torch.randn(16 * t_max, generator=g), torch.rand(16 * t_max, generator=g) + 0.5
    torch.save((mean, std), folder / "mean_std.pt")
    out = tmp_path / "cv"
    prepare_latents(_cfg(dataset, out, vae="cosmos-cv", vae_path=str(folder)))
    d = DiTLatentDataset(out)
    assert d.info["vae"]["scale"] == 0.5 and d.info["vae"]["normalization"]["kind"] == "per_channel_per_frame"
    tok = load_video_tokenizer(folder)
    m = mean.view(1, 16, -1, 1, 1)[:, :, :2]
    s = std.view(1, 16, -1, 1, 1)[:, :, :2]
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for doc, rec in enumerate(d.records[:3]):
            clip = _clip(dataset / rec["source"], rec["start_frame"], 5)
            x = torch.from_numpy(clip).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
            ref = ((tok.encode(x) - m) / s * 0.5)[0]
            torch.testing.assert_close(d.latent(doc), ref, rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(old)
    # More latent frames than mean_std has: an error with the longest valid clip.
    with pytest.raises(PrepareError, match=r"--num_frames <= 9"):
        prepare_latents(_cfg(dataset, tmp_path / "cv2", vae="cosmos-cv", vae_path=str(folder), num_frames=13))
    with pytest.raises(PrepareError, match="mean_std"):
        (folder / "mean_std.pt").unlink()
        prepare_latents(_cfg(dataset, tmp_path / "cv3", vae="cosmos-cv", vae_path=str(folder)))


def test_bad_settings_are_errors_before_any_work(dataset, wan_vae, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(PrepareError, match=r"--num_frames 6 is not 1 \+ k\*4.*use 5 or 9"):
        prepare_latents(_cfg(dataset, out, vae_path=str(wan_vae), num_frames=6))
    with pytest.raises(PrepareError, match="--video_size width 20 is not a multiple of the spatial compression 8"):
        prepare_latents(_cfg(dataset, out, vae_path=str(wan_vae), video_size=[16, 20]))
    with pytest.raises(PrepareError, match="cannot load the Wan2.1 VAE"):
        prepare_latents(_cfg(dataset, out, vae_path=str(tmp_path / "missing")))
    (dataset.parent / "nocap").mkdir(exist_ok=True)
    nocap = _write_dataset(dataset.parent / "nocap" / "ds") if not (dataset.parent / "nocap" / "ds").exists() \
        else dataset.parent / "nocap" / "ds"
    (nocap / "metas" / "b1.txt").unlink(missing_ok=True)
    with pytest.raises(PrepareError, match="no caption for b1.*prepare prompts"):
        prepare_latents(_cfg(nocap, out, vae_path=str(wan_vae)))
    assert not out.exists()


def test_streaming_writer_equals_write_dit_dataset(tmp_path):
    from cosmos_nemo.data.dit_dataset import write_dit_dataset
    from cosmos_nemo.data.dit_writer import write_dit_dataset_streaming

    g = torch.Generator().manual_seed(0)
    latents = [torch.randn(16, 1 + i % 2, 2, 4, generator=g) for i in range(300)]  # two shards of 256 + 44
    pids = [i % 3 for i in range(300)]
    emb, mask = torch.randn(3, 8, 32, generator=g), torch.rand(3, 8, generator=g) > 0.3
    records = [{"source": f"v{i}.mp4", "start_frame": i} for i in range(300)]
    text = {"length": 8, "dim": 32}
    write_dit_dataset(tmp_path / "a", latents, pids, emb, mask, fps=12.0, vae={"name": "x"}, text=text, records=records)
    docs = ((z, dict(r, fps=12.0, prompt_id=p)) for z, r, p in zip(latents, records, pids))
    write_dit_dataset_streaming(tmp_path / "b", docs, emb, mask, vae={"name": "x"}, text=text)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    # A byte cap closes shards earlier; the reader does not care.
    from cosmos_nemo.data.dit_dataset import DiTLatentDataset

    docs = ((z, dict(r, fps=12.0, prompt_id=p)) for z, r, p in zip(latents, records, pids))
    write_dit_dataset_streaming(tmp_path / "c", docs, emb, mask, max_shard_bytes=16 * 2 * 8 * 4 * 10)
    d = DiTLatentDataset(tmp_path / "c")
    assert len({r["shard"] for r in d.records}) > 2
    assert all(torch.equal(d.latent(i), latents[i]) for i in range(300))


def test_help_explains_every_flag():
    import argparse

    from cosmos_nemo.data_prep.flags import add_flags, setting_fields
    from cosmos_nemo.data_prep.settings import LatentsConfig, TextEmbeddingsConfig

    for cls in (LatentsConfig, TextEmbeddingsConfig):
        parser = argparse.ArgumentParser()
        add_flags(parser, cls)
        text = parser.format_help()
        for f in setting_fields(cls):
            assert f.metadata["help"].strip(), f.name
            flags = f.metadata.get("flags") or ("--" + f.name.replace("_", "-"),)
            assert flags[0] in text, f.name
        assert "can run arbitrary code" in text or "can run code" in text


@pytest.mark.parametrize("kind", ["latents", "text-embeddings"])
def test_flags_are_generated_from_the_config(kind):
    import argparse
    import dataclasses

    from cosmos_nemo.data_prep import commands
    from cosmos_nemo.data_prep.flags import flag_names, from_args
    from cosmos_nemo.data_prep.settings import LatentsConfig, TextEmbeddingsConfig

    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    prepare = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["prepare"]
    sub = next(a for a in prepare._actions if isinstance(a, argparse._SubParsersAction)).choices[kind]
    cls = {"latents": LatentsConfig, "text-embeddings": TextEmbeddingsConfig}[kind]
    actions = {a.dest: a for a in sub._actions if a.option_strings and a.dest != "help"}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(actions) == set(fields)
    for name, f in fields.items():
        assert tuple(actions[name].option_strings) == flag_names(f)
        assert actions[name].required == (f.default is dataclasses.MISSING), name
    required = ["--dataset_path", "d"] + (["--output_dir", "o"] if kind == "latents" else [])
    parsed = from_args(cls, sub.parse_args(required))
    assert parsed == cls(dataset_path=Path("d"), **({"output_dir": Path("o")} if kind == "latents" else {}))
    if kind == "latents":
        args = sub.parse_args(required + ["--video_size", "704", "1280", "--num_frames", "121", "--vae", "cosmos-cv",
                                          "--sequence_interval", "2", "--start_frame_interval", "3"])
        cfg = from_args(cls, args)
        assert (cfg.video_size, cfg.num_frames, cfg.vae, cfg.sequence_interval, cfg.start_frame_interval) == \
            ([704, 1280], 121, "cosmos-cv", 2, 3)


def test_predict25_json_captions_layout(tmp_path):
    from cosmos_nemo.data_prep.text_embeddings import read_layout

    root = tmp_path / "assets_json" / "train"
    (root / "videos").mkdir(parents=True)
    (root / "captions").mkdir()
    for stem in ("x", "y"):
        write_mp4(root / "videos" / f"{stem}.mp4", syn.pattern_frames(5, 16, 16), fps=10)
        caps = {"qwen": {"long": f"long {stem}", "medium": f"medium {stem}", "short": f"short {stem}"},
                "other": {"long": f"other long {stem}"}}
        (root / "captions" / f"{stem}.json").write_text(__import__("json").dumps(caps))
    assert [it.caption for it in read_layout(root)] == ["long x", "long y"]  # first captioner, long by default
    assert [it.caption for it in read_layout(root, prompt_type="short")] == ["short x", "short y"]
    assert [it.caption for it in read_layout(root, captioner="other")] == ["other long x", "other long y"]
    with pytest.raises(PrepareError, match="no 'short' caption"):
        read_layout(root, prompt_type="short", captioner="other")
