"""Every named configuration: parameter counts (meta device), key layout, shapes at small inputs, causality,
the Haar patcher against an independent computation, registry and loader errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from cosmos_nemo.tokenizers import REGISTRY, load_video_tokenizer
from cosmos_nemo.tokenizers.api import CausalVideoTokenizer, VideoShapeError
from cosmos_nemo.tokenizers.configs import REFERENCE_PARAM_COUNTS, get_config, reference_count_key
from cosmos_nemo.tokenizers.layers import Patcher3D, UnPatcher3D
from cosmos_nemo.tokenizers.loading import TokenizerNotAvailableError
from cosmos_nemo.tokenizers.network import TokenizerDecoder, TokenizerEncoder

RELEASED = [name for name, cfg in REGISTRY.items() if cfg.hub_id]


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", RELEASED)
def test_parameter_counts_match_reference_table(name):
    cfg = REGISTRY[name]
    with torch.device("meta"):
        enc, dec = TokenizerEncoder(cfg), TokenizerDecoder(cfg)
    assert (_count(enc), _count(dec)) == REFERENCE_PARAM_COUNTS[reference_count_key(cfg)]


def test_registry_covers_every_release_and_hub_id():
    expected = {
        "Cosmos-0.1-Tokenizer-CV4x8x8", "Cosmos-0.1-Tokenizer-CV8x8x8", "Cosmos-0.1-Tokenizer-CV8x16x16",
        "Cosmos-0.1-Tokenizer-DV4x8x8", "Cosmos-0.1-Tokenizer-DV8x8x8", "Cosmos-0.1-Tokenizer-DV8x16x16",
        "Cosmos-1.0-Tokenizer-CV8x8x8", "Cosmos-1.0-Tokenizer-DV8x16x16",
        "Cosmos-1.0-Tokenizer-CV4x8x8-LowRes", "Cosmos-1.0-Tokenizer-DV4x8x8-LowRes",
        "Cosmos-Tokenize1-CV8x8x8-720p", "Cosmos-Tokenize1-CV4x8x8-360p",
        "Cosmos-Tokenize1-DV8x16x16-720p", "Cosmos-Tokenize1-DV4x8x8-360p",
    }  # fmt: skip
    assert set(RELEASED) == expected
    for name in expected:
        assert get_config(f"nvidia/{name}") is REGISTRY[name]
    low = get_config("Cosmos-1.0-Tokenizer-DV4x8x8-LowRes")
    assert (low.patch_size, low.z_channels) == (2, 256)
    assert get_config("Cosmos-0.1-Tokenizer-CV4x8x8").channels_mult == (2, 4)


def test_released_key_layout_dv8x16x16():
    # Counts from the reference: the DV8x16x16 encoder.jit has 148 keys, its decoder.jit 181.
    cfg = REGISTRY["Cosmos-0.1-Tokenizer-DV8x16x16"]
    with torch.device("meta"):
        enc, dec = TokenizerEncoder(cfg), TokenizerDecoder(cfg)
    enc_keys, dec_keys = list(enc.state_dict()), list(dec.state_dict())
    assert len(enc_keys) == 148 and len(dec_keys) == 181
    for k in ("encoder.patcher3d.wavelets", "encoder.patcher3d._arange", "encoder.patcher3d.patch_size_buffer",
              "encoder.down.0.downsample.conv2.conv3d.weight", "encoder.down.1.downsample.conv1.conv3d.weight",
              "encoder.mid.attn_1.1.proj_out.conv3d.bias", "quant_conv.conv3d.weight", "quantizer.implicit_codebook"):
        assert k in enc_keys  # fmt: skip
    assert "encoder.down.1.downsample.conv2.conv3d.weight" not in enc_keys  # Identity: no temporal down there
    for k in ("inv_quant.quantizer._basis", "post_quant_conv.conv3d.weight", "decoder.unpatcher3d.wavelets",
              "decoder.up.2.upsample.conv2.conv3d.weight", "decoder.up.1.upsample.conv1.conv3d.weight"):
        assert k in dec_keys  # fmt: skip
    assert "decoder.up.2.upsample.conv1.conv3d.weight" not in dec_keys
    assert all(re.match(r"^(encoder|quant_conv|quantizer)\.", k) for k in enc_keys)


# Latent shapes for a 1x3x17x64x64 input (reference §3.3); the test runs 32x32 (halved h, w) to stay fast.
SHAPES = {
    (4, 8): (5, 8, 8),
    (8, 8): (3, 8, 8),
    (8, 16): (3, 4, 4),
}


@pytest.mark.parametrize("name", RELEASED + ["tiny", "tiny-cv"])
def test_shapes_small_input(name):
    cfg = REGISTRY[name]
    # Width 8 keeps the test fast; the topology (levels, resampling, patching) is the named config's.
    small = cfg.replace(channels=8)
    torch.manual_seed(0)
    model = CausalVideoTokenizer(small).eval()
    t, s, _ = model.compression
    for frames in (17, 1):
        x = torch.rand(1, 3, frames, 32, 32) * 2 - 1
        z = model.encode(x)
        tt, hh, ww = SHAPES[(t, s)]
        grid = (tt, hh // 2, ww // 2) if frames == 17 else (1, 32 // s, 32 // s)
        if cfg.discrete:
            assert z.shape == (1, *grid) and z.dtype == torch.int64
            assert int(z.min()) >= 0 and int(z.max()) < 64000
        else:
            assert z.shape == (1, cfg.latent_channels, *grid) and z.is_floating_point()
        assert model.decode(z).shape == x.shape


@pytest.mark.parametrize("name", ["Cosmos-0.1-Tokenizer-CV8x16x16", "Cosmos-Tokenize1-DV4x8x8-360p", "tiny"])
def test_causality(name):
    cfg = REGISTRY[name].replace(channels=8)
    torch.manual_seed(0)
    model = CausalVideoTokenizer(cfg).eval()
    t = cfg.temporal_compression
    x = torch.rand(1, 3, 1 + 2 * t, 32, 32) * 2 - 1
    k = 1
    y = x.clone()
    y[:, :, 1 + k * t :] = torch.rand_like(y[:, :, 1 + k * t :]) * 2 - 1  # perturb frames after k·t
    if cfg.discrete:
        _, cx = model.encode_with_codes(x)
        _, cy = model.encode_with_codes(y)
        zx, zy = model.encoder.pre_quant(x), model.encoder.pre_quant(y)
    else:
        zx, zy = model.encode(x), model.encode(y)
        cx, cy = zx, zy
    assert torch.equal(zx[:, :, : k + 1], zy[:, :, : k + 1])
    assert not torch.equal(zx[:, :, k + 1 :], zy[:, :, k + 1 :])
    # decoding: changing latent frames after k leaves the first 1 + k·t output frames unchanged
    cz = cx.clone()
    cz[:, :, k + 1 :] = cy[:, :, k + 1 :] + 0.5
    with torch.no_grad():
        dx = model.decode(cx)
        dz = model.decode(cz)
    assert torch.equal(dx[:, :, : 1 + k * t], dz[:, :, : 1 + k * t])
    assert not torch.equal(dx[:, :, 1 + k * t :], dz[:, :, 1 + k * t :])


def test_haar_patcher_against_numpy_and_inverse():
    # Independent Haar: after repeating frame 0 (p−1 extra times), one level maps each 2×2×2 cell (t,h,w) to
    # 8 bands; band (a,b,c) = Σ x[t+i,h+j,w+k]·s_a(i)s_b(j)s_c(k)/8 (filters 1/√2 per axis, then ÷2√2),
    # s_0=(1,1), s_1=(1,−1), bands in order a,b,c.
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 5, 8, 12, generator=gen) * 2 - 1
    p = Patcher3D(2)
    y = p(x)
    xr = np.concatenate([x[:, :, :1].numpy(), x.numpy()], axis=2)  # T 5 → 6
    sgn = [np.array([1.0, 1.0]), np.array([1.0, -1.0])]
    bands = []
    for a in range(2):
        for b in range(2):
            for c in range(2):
                k = np.einsum("i,j,k->ijk", sgn[a], sgn[b], sgn[c]) / 8
                cells = xr.reshape(1, 3, 3, 2, 4, 2, 6, 2)
                bands.append(np.einsum("nctihjwk,ijk->ncthw", cells, k))
    expected = np.concatenate(bands, axis=1)
    np.testing.assert_allclose(y.numpy(), expected, atol=1e-5)
    # LLL = the mean of each cell
    np.testing.assert_allclose(y[:, :3].numpy(), xr.reshape(1, 3, 3, 2, 4, 2, 6, 2).mean(axis=(3, 5, 7)), atol=1e-6)
    # the unpatcher inverts it (patch 2 and 4)
    torch.testing.assert_close(UnPatcher3D(2)(y), x, atol=1e-5, rtol=0)
    x4 = torch.rand(2, 3, 9, 16, 8, generator=gen)
    torch.testing.assert_close(UnPatcher3D(4)(Patcher3D(4)(x4)), x4, atol=1e-5, rtol=0)
    assert Patcher3D(4)(x4).shape == (2, 192, 3, 4, 2)


def test_shape_errors_show_the_arithmetic():
    model = load_video_tokenizer("tiny")
    with pytest.raises(VideoShapeError, match=r"frames=16 is not 1 \+ k·4 \(nearest valid: 13 or 17\)"):
        model.encode(torch.zeros(1, 3, 16, 64, 64))
    with pytest.raises(VideoShapeError, match=r"height=60 is not a positive multiple of 8"):
        model.encode(torch.zeros(1, 3, 17, 60, 64))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 64000\)"):
        model.decode(torch.full((1, 1, 2, 2), 64000))


def test_windowed_encode_matches_independent_chunks():
    model = load_video_tokenizer("tiny")
    x = torch.rand(1, 3, 18, 16, 16) * 2 - 1
    z = model.encode(x, temporal_window=9)
    assert torch.equal(z, torch.cat([model.encode(x[:, :, :9]), model.encode(x[:, :, 9:])], dim=1))
    rec = model.decode(z, temporal_window=9)
    assert torch.equal(rec, torch.cat([model.decode(z[:, :3]), model.decode(z[:, 3:])], dim=2))


def test_reconstruct_frames_pads_and_crops():
    model = load_video_tokenizer("tiny")
    frames = (np.random.default_rng(0).random((20, 30, 44, 3)) * 255).astype(np.uint8)
    out = model.reconstruct_frames(frames, temporal_window=17)
    assert out.shape == frames.shape and out.dtype == np.uint8


def test_save_load_roundtrip_and_tiny_is_deterministic(tmp_path):
    a, b = load_video_tokenizer("tiny"), load_video_tokenizer("tiny")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    a.save(tmp_path / "tok")
    c = load_video_tokenizer(tmp_path / "tok")
    assert c.name == "tiny" and c.vocab_size == 64000
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    assert torch.equal(a.encode(x), c.encode(x))
    cv = load_video_tokenizer("tiny-cv")
    cv.save(tmp_path / "cv")
    cv2 = load_video_tokenizer(tmp_path / "cv")
    assert not cv2.discrete and cv2.vocab_size == 0
    torch.testing.assert_close(cv.encode(x), cv2.encode(x), rtol=0, atol=0)


def test_loader_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TokenizerNotAvailableError, match=r"pass that folder.*checkpoints/Cosmos-0\.1-Tokenizer-DV4x8x8"):
        load_video_tokenizer("nvidia/Cosmos-0.1-Tokenizer-DV4x8x8")
    with pytest.raises(FileNotFoundError, match=r"neither a folder nor a known tokenizer"):
        load_video_tokenizer("no-such-tokenizer")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"holds no tokenizer weights"):
        load_video_tokenizer(tmp_path / "empty")
