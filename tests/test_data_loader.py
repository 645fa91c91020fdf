"""Batches for the trainer: layout (tokens/labels/loss_mask/context) against the stored documents read
independently with megatron's IndexedDataset, the builder, DP sharding, resume and worker processes."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from cosmos_nemo.data import (
    ARDataConfig,
    ARDatasetError,
    SamplerError,
    build_ar_dataloaders,
    write_pattern_dataset,
)

_OPEN = []


def _megatron_doc(path, doc):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(str(path / "tokens"))
    _OPEN.append(ds)  # its arrays are views into the mmap
    return ds[int(doc)].astype(np.int64)


@pytest.fixture(scope="module")
def base_path(tmp_path_factory):
    return write_pattern_dataset(tmp_path_factory.mktemp("data") / "base", 40, grid=[(2, 3, 4), (3, 2, 2)],
                                 vocab_size=97, seed=0, pattern="ramp")


@pytest.fixture(scope="module")
def v2w_path(tmp_path_factory):
    return write_pattern_dataset(tmp_path_factory.mktemp("data") / "v2w", 20, grid=[(2, 3, 4), (1, 4, 4)],
                                 vocab_size=64000, seed=1, task="video2world", num_prompts=3)


def test_base_batch_layout(base_path):
    train, _, _ = build_ar_dataloaders(ARDataConfig(paths=[str(base_path)], split_string="1,0,0",
                                                    micro_batch_size=2, global_batch_size=4))
    for _ in range(6):
        batch = next(train)
        t, h, w = batch["grid"]
        n = t * h * w
        assert batch["tokens"].shape == batch["labels"].shape == batch["loss_mask"].shape == (2, n)
        assert batch["tokens"].dtype == batch["labels"].dtype == torch.long
        assert batch["loss_mask"].dtype == torch.float32
        for row, (_, doc) in enumerate(batch["sample_ids"].tolist()):
            stored = _megatron_doc(base_path, doc)
            np.testing.assert_array_equal(batch["tokens"][row].numpy(), stored)
            np.testing.assert_array_equal(batch["labels"][row, :-1].numpy(), stored[1:])
        expected_mask = torch.ones(2, n)
        expected_mask[:, -1] = 0  # the last position has no label (clips are never packed)
        assert torch.equal(batch["loss_mask"], expected_mask)
        assert "context" not in batch


def test_exclude_first_frame_base(base_path):
    train, _, _ = build_ar_dataloaders(ARDataConfig(paths=[str(base_path)], split_string="1,0,0", micro_batch_size=1,
                                                    global_batch_size=1, exclude_first_frame=True))
    for _ in range(4):
        batch = next(train)
        t, h, w = batch["grid"]
        mask = batch["loss_mask"][0]
        # labels[i] = token[i+1]: label in latent frame 0 iff i + 1 < H*W; the last position has none
        expected = torch.tensor([1.0 if (i + 1 >= h * w and i < t * h * w - 1) else 0.0 for i in range(t * h * w)])
        assert torch.equal(mask, expected)
        assert mask.sum() == t * h * w - h * w


def test_video2world_batch_layout(v2w_path):
    from safetensors.torch import load_file

    table = load_file(str(v2w_path / "text_embeddings.safetensors"))
    for exclude in (False, True):
        train, _, _ = build_ar_dataloaders(ARDataConfig(paths=[str(v2w_path)], split_string="1,0,0", micro_batch_size=2,
                                                        global_batch_size=2, exclude_first_frame=exclude))
        from cosmos_nemo.data import ARTokenDataset

        ds = ARTokenDataset(v2w_path)
        for _ in range(4):
            batch = next(train)
            t, h, w = batch["grid"]
            n = t * h * w
            L = -(-(1 + n) // 64) * 64
            assert batch["tokens"].shape == (2, L)
            for row, (_, doc) in enumerate(batch["sample_ids"].tolist()):
                stored = _megatron_doc(v2w_path, doc)
                np.testing.assert_array_equal(batch["tokens"][row].numpy(), stored[:-1])
                np.testing.assert_array_equal(batch["labels"][row].numpy(), stored[1:])
                pid = int(ds.prompt_ids[doc])
                torch.testing.assert_close(batch["context"][row], table["embeddings"][pid].float(), rtol=0, atol=0)
                assert torch.equal(batch["context_mask"][row], table["mask"][pid])
            assert batch["tokens"][0, 0].item() == 64000
            expected = (torch.arange(L) < n).float()  # loss on the N clip labels only, never on PAD targets
            if exclude:
                expected[: h * w] = 0
            assert torch.equal(batch["loss_mask"][0], expected)
            assert (batch["labels"][batch["loss_mask"] > 0] < 64000).all()
            assert batch["context"].dtype == torch.float32 and batch["context"].shape[0] == 2


def test_reference_v2w_sequence_length():
    """5x40x64 → 12864 inputs with loss on 12800, as NVIDIA's V2W dataset (ar_models.md §3)."""
    from cosmos_nemo.data.layout import sequence_length, stored_length

    assert sequence_length((5, 40, 64), "video2world") == 12864
    assert stored_length((5, 40, 64), "video2world") == 12865
    assert sequence_length((5, 40, 64), "base") == 12800


def test_splits_and_disabled_split(base_path):
    cfg = ARDataConfig(paths=[str(base_path)], split_string="30,5,5", micro_batch_size=1, global_batch_size=1)
    train, valid, test = build_ar_dataloaders(cfg)
    train_docs = {d for _ in range(train.micro_batches_per_epoch()) for _, d in next(train)["sample_ids"].tolist()}
    valid_docs = {d for _ in range(valid.micro_batches_per_epoch()) for _, d in next(valid)["sample_ids"].tolist()}
    test_docs = {d for _ in range(test.micro_batches_per_epoch()) for _, d in next(test)["sample_ids"].tolist()}
    assert (train_docs, valid_docs, test_docs) == (set(range(30)), set(range(30, 35)), set(range(35, 40)))
    train, valid, test = build_ar_dataloaders(ARDataConfig(paths=[str(base_path)], split_string="9,1,0"))
    assert test is None and valid is not None


def test_dp_sharding_of_loaders(base_path):
    mk = lambda rank, size, mbs: build_ar_dataloaders(
        ARDataConfig(paths=[str(base_path)], split_string="1,0,0", micro_batch_size=mbs, global_batch_size=8, seed=7),
        dp_rank=rank, dp_size=size)[0]
    one, r0, r1 = mk(0, 1, 2), mk(0, 2, 2), mk(1, 2, 2)
    assert (one.num_micro_batches, r0.num_micro_batches) == (4, 2)
    for _ in range(5):  # global batches
        full = [tuple(x) for _ in range(4) for x in next(one)["sample_ids"].tolist()]
        k0 = [tuple(x) for _ in range(2) for x in next(r0)["sample_ids"].tolist()]
        k1 = [tuple(x) for _ in range(2) for x in next(r1)["sample_ids"].tolist()]
        assert not set(k0) & set(k1) and Counter(k0 + k1) == Counter(full)


def test_loader_resume_is_exact(base_path):
    cfg = ARDataConfig(paths=[str(base_path)], split_string="1,0,0", micro_batch_size=2, global_batch_size=4, seed=3)
    ref, _, _ = build_ar_dataloaders(cfg)
    expected = [next(ref) for _ in range(25)]
    a, _, _ = build_ar_dataloaders(cfg)
    for _ in range(11):  # ends mid global batch, in the second epoch's neighbourhood
        next(a)
    b, _, _ = build_ar_dataloaders(cfg)
    b.load_state_dict(a.state_dict())
    for want in expected[11:]:
        got = next(b)
        assert got["grid"] == want["grid"]
        for key in ("tokens", "labels", "loss_mask", "sample_ids"):
            assert torch.equal(got[key], want[key])


def test_worker_processes_give_the_same_batches(base_path):
    cfg = ARDataConfig(paths=[str(base_path)], split_string="1,0,0", micro_batch_size=2, global_batch_size=4, seed=3)
    plain, _, _ = build_ar_dataloaders(cfg)
    cfg.num_workers = 1
    workers, _, _ = build_ar_dataloaders(cfg)
    for _ in range(6):
        a, b = next(plain), next(workers)
        assert torch.equal(a["tokens"], b["tokens"]) and torch.equal(a["sample_ids"], b["sample_ids"])
    assert workers.state_dict() == plain.state_dict()  # position counts returned batches, not prefetched ones
    state = plain.state_dict()
    expected = [next(plain)["sample_ids"] for _ in range(3)]
    workers.load_state_dict(state)
    assert all(torch.equal(next(workers)["sample_ids"], e) for e in expected)


def test_peek_grid_and_seq_length(base_path):
    train, _, _ = build_ar_dataloaders(ARDataConfig(paths=[str(base_path)], split_string="1,0,0", micro_batch_size=1,
                                                    global_batch_size=2))
    for _ in range(6):
        grid, length = train.peek_grid(), train.seq_length()
        batch = next(train)
        assert batch["grid"] == grid and batch["tokens"].shape[1] == length == int(np.prod(grid))


def test_blend_of_two_datasets(base_path, tmp_path):
    other = write_pattern_dataset(tmp_path / "other", 10, grid=(2, 3, 4), vocab_size=97, seed=5, pattern="ramp")
    cfg = ARDataConfig(paths=[str(base_path), str(other)], weights=[1, 3], split_string="1,0,0", micro_batch_size=2,
                       global_batch_size=2)
    train, _, _ = build_ar_dataloaders(cfg)
    plan = train.sampler.plan(0)
    assert Counter(plan.source.tolist()) == {0: 13, 1: 37}  # 50 samples split 1:3 (largest remainder)
    batch = next(train)
    for row, (k, doc) in enumerate(batch["sample_ids"].tolist()):
        np.testing.assert_array_equal(batch["tokens"][row].numpy(), _megatron_doc([base_path, other][k], doc))


def test_builder_errors(base_path, v2w_path, tmp_path):
    with pytest.raises(ARDatasetError, match="data.paths is empty"):
        build_ar_dataloaders(ARDataConfig())
    with pytest.raises(ARDatasetError, match="cannot blend .* task differs"):
        build_ar_dataloaders(ARDataConfig(paths=[str(base_path), str(v2w_path)]))
    with pytest.raises(ARDatasetError, match="1 blend weights for 2 datasets"):
        build_ar_dataloaders(ARDataConfig(paths=[str(base_path), str(base_path)], weights=[1]))
    with pytest.raises(ARDatasetError, match="data.task is 'video2world' but the datasets were prepared for 'base'"):
        build_ar_dataloaders(ARDataConfig(paths=[str(base_path)], task="video2world"))
    with pytest.raises(SamplerError, match="split 'test' of split_string '98,1,1' is empty"):
        build_ar_dataloaders(ARDataConfig(paths=[str(base_path)], split_string="98,1,1"))
    with pytest.raises(ARDatasetError, match="does not exist"):
        build_ar_dataloaders(ARDataConfig(paths=[str(tmp_path / "missing")]))


def test_pattern_batches_are_learnable(base_path, v2w_path):
    """The synthetic sets used by the trainer's learning tests: every masked-in label is a function of the
    inputs (ramp: previous token + 1; V2W: the prompt fixes the clip)."""
    train, _, _ = build_ar_dataloaders(ARDataConfig(paths=[str(base_path)], split_string="1,0,0", micro_batch_size=2,
                                                    global_batch_size=2))
    for _ in range(5):
        b = next(train)
        m = b["loss_mask"] > 0
        assert torch.equal(b["labels"][m], (b["tokens"][m] + 1) % 97)
    train, _, _ = build_ar_dataloaders(ARDataConfig(paths=[str(v2w_path)], split_string="1,0,0", micro_batch_size=1,
                                                    global_batch_size=1))
    by_prompt = {}
    for _ in range(20):
        b = next(train)
        key = (b["context"][0].sum().item(), b["grid"])
        by_prompt.setdefault(key, set()).add(tuple(b["labels"][0].tolist()))
    assert all(len(v) == 1 for v in by_prompt.values())  # same prompt + grid → same clip
    assert len({next(iter(v))[0] for v in by_prompt.values()}) > 1  # different prompts → different clips
