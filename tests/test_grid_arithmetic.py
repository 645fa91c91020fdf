"""Grid arithmetic against the reference's documented combinations and an independent formula."""

import pytest

from cosmos_nemo.tokenizers.grid import (
    Compression,
    GridError,
    LatentGrid,
    base_layout,
    check_frames,
    check_stored_length,
    latent_frames_covering,
    latent_grid,
    num_tokens,
    pixel_shape,
    v2w_layout,
)


@pytest.mark.parametrize(
    "frames,height,width,comp,expected",
    [
        (33, 640, 1024, "8,16,16", (5, 40, 64)),  # NeMo general.py default, DV8x16x16
        (17, 320, 512, "4,8,8", (5, 40, 64)),  # tokenizer-swap recipe, DV4x8x8
        (17, 64, 96, "DV4x8x8", (5, 8, 12)),
        (17, 64, 64, "CV8x8x8", (3, 8, 8)),  # tokenizer doc shape check
        (17, 64, 64, "CV8x16x16", (3, 4, 4)),
        (17, 64, 64, "CV4x8x8", (5, 8, 8)),
        (9, 32, 48, "DV4x8x8", (3, 4, 6)),
        (1, 640, 1024, "8x16x16", (1, 40, 64)),  # a single image is one latent frame
        (121, 704, 1280, (8, 8, 8), (16, 88, 160)),
    ],
)
def test_valid_combinations(frames, height, width, comp, expected):
    grid = latent_grid(frames, height, width, comp)
    assert grid.as_tuple() == expected
    c = Compression.parse(comp)
    # independent formula: causal time, exact space
    assert grid.num_tokens == ((frames - 1) // c.t + 1) * (height // c.h) * (width // c.w)
    assert pixel_shape(grid, comp) == (frames, height, width)


def test_reference_token_counts():
    assert num_tokens(33, 640, 1024, "DV8x16x16") == 12_800
    assert num_tokens(17, 320, 512, "DV4x8x8") == 12_800
    assert LatentGrid(5, 40, 64).num_tokens == 12_800


def test_v2w_layout_matches_reference_lengths():
    layout = v2w_layout((5, 40, 64))
    assert layout.input_length == 12_864
    assert layout.stored_length == 12_865
    assert layout.num_pad_stored == 64
    assert layout.num_pad_input == 63
    ids = list(range(12_800))
    stored = layout.stored_tokens(ids)
    assert stored[0] == 64000 and stored[1:12_801] == ids and stored[12_801:] == [64002] * 64
    mask = layout.loss_mask()
    assert len(mask) == 12_864 and sum(mask) == 12_800 and mask[12_799] == 1 and mask[12_800] == 0
    # a grid whose BOV + tokens already fill a multiple of 64: 1 + 63 = 64, no pad inside the input
    exact = v2w_layout((1, 7, 9))
    assert exact.input_length == 64 and exact.num_pad_input == 0 and exact.stored_length == 65
    small = v2w_layout((3, 4, 6))
    assert small.input_length == 128 and small.stored_length == 129


def test_base_layout():
    layout = base_layout(LatentGrid(3, 4, 6))
    assert layout.input_length == layout.stored_length == 72
    assert layout.loss_mask() == [1] * 72
    with pytest.raises(GridError, match="holds 72 tokens, got 3"):
        layout.stored_tokens([1, 2, 3])
    check_stored_length(12_865, (5, 40, 64), v2w=True)
    with pytest.raises(GridError, match="12865 tokens, got 12864"):
        check_stored_length(12_864, (5, 40, 64), v2w=True)


def test_frames_refusal_shows_nearest():
    with pytest.raises(GridError) as err:
        latent_grid(32, 640, 1024, "DV8x16x16")
    msg = str(err.value)
    assert "1 + 8k" in msg and "got 32" in msg and "25 or 33 would work" in msg


def test_spatial_refusal_shows_nearest():
    with pytest.raises(GridError, match=r"height must be a multiple of 16 .* got 360 .*352 or 368 would work"):
        latent_grid(33, 360, 640, "8,16,16")
    with pytest.raises(GridError, match=r"width must be a multiple of 8 .*got 100.*96 or 104 would work"):
        latent_grid(17, 64, 100, "4,8,8")


def test_all_problems_reported_together():
    with pytest.raises(GridError) as err:
        latent_grid(10, 100, 100, "8,16,16")
    msg = str(err.value)
    assert "frames" in msg and "height" in msg and "width" in msg


@pytest.mark.parametrize("bad", ["8-16", "DVabc", (8, 16), (0, 16, 16)])
def test_bad_compression(bad):
    with pytest.raises(GridError):
        Compression.parse(bad)


def test_bad_values():
    with pytest.raises(GridError, match="positive integer"):
        check_frames(0, "8,16,16")
    with pytest.raises(GridError):
        LatentGrid(0, 4, 4)
    with pytest.raises(GridError, match="3 sizes"):
        LatentGrid.of((1, 2))


def test_image_tokenizer_and_context_frames():
    assert Compression.parse("DI16x16") == Compression(1, 16, 16)
    assert latent_grid(7, 64, 64, "CI8x8").as_tuple() == (7, 8, 8)
    assert latent_frames_covering(9, "8,16,16") == 2  # 9 input frames -> 2 latents = 5120 tokens
    assert latent_frames_covering(1, "8,16,16") == 1
    assert latent_frames_covering(10, "8,16,16") == 3
