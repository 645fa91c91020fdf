"""The CPU adapter's speed-ups sit behind one switch: off, the model and the step are megatron's own
(what a GPU runs), and training gives the same losses and weights as with them on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cosmos_nemo.parallel import cpu_adapter
from cosmos_nemo.parallel.launch import run_in_processes

pytestmark = pytest.mark.cpu_only  # the accelerations exist only where the CPU adapter is installed


@pytest.fixture
def switch(monkeypatch):
    """The switch's state, restored after the test."""
    monkeypatch.delenv(cpu_adapter.ENV_VAR, raising=False)
    monkeypatch.setattr(cpu_adapter, "_INSTALLED", True)
    yield monkeypatch
    cpu_adapter.configure_accelerations(True)


def test_switch_reads_config_and_environment(switch):
    every = set(cpu_adapter.ACCELERATIONS)
    assert cpu_adapter.enabled_accelerations() == every
    cpu_adapter.configure_accelerations(False)
    assert cpu_adapter.enabled_accelerations() == set()
    switch.setenv(cpu_adapter.ENV_VAR, "1")  # the variable wins over the config field
    assert cpu_adapter.enabled_accelerations() == every
    cpu_adapter.configure_accelerations(True)
    switch.setenv(cpu_adapter.ENV_VAR, "0")
    assert cpu_adapter.enabled_accelerations() == set() and not cpu_adapter.acceleration("fused_loss")
    switch.setenv(cpu_adapter.ENV_VAR, "fused_loss, fused_adamw")
    assert cpu_adapter.enabled_accelerations() == {"fused_loss", "fused_adamw"}
    switch.setenv(cpu_adapter.ENV_VAR, "-fused_loss")
    assert cpu_adapter.enabled_accelerations() == every - {"fused_loss"}
    for bad, message in (("fused_los", "unknown acceleration"), ("fused_loss,-fused_adamw", "not both")):
        switch.setenv(cpu_adapter.ENV_VAR, bad)
        with pytest.raises(ValueError, match=message):
            cpu_adapter.enabled_accelerations()
    with pytest.raises(KeyError, match="unknown CPU acceleration"):
        cpu_adapter.acceleration("nope")


def test_nothing_is_accelerated_without_the_adapter(switch):
    switch.setattr(cpu_adapter, "_INSTALLED", False)  # as on a GPU machine, where install() does nothing
    assert cpu_adapter.enabled_accelerations() == set()


def _built(accelerations: bool) -> dict:
    torch.set_num_threads(1)
    from megatron.core.tensor_parallel import VocabParallelEmbedding

    from cosmos_nemo import parallel
    from cosmos_nemo.models.ar.config import ar_config
    from cosmos_nemo.models.ar.model import build_ar_model
    from cosmos_nemo.training import harness
    from cosmos_nemo.training.config import OptimizerConfig

    cpu_adapter.configure_accelerations(accelerations)
    parallel.setup()
    chunks = harness.wrap_model(lambda pre, post: build_ar_model(ar_config("tiny", vocab_size=64), pre, post))
    optimizer = harness.build_optimizer(chunks, OptimizerConfig())
    model = chunks[0].module
    layer = model.decoder.layers[0]
    torch_opt = optimizer.chained_optimizers[0].optimizer if hasattr(optimizer, "chained_optimizers") else optimizer.optimizer
    out = {
        "embedding_is_megatrons": type(model.embedding.word_embeddings) is VocabParallelEmbedding,
        "wgrad_fusion": bool(layer.mlp.linear_fc1.gradient_accumulation_fusion),
        "fused_adamw": bool(torch_opt.param_groups[0].get("fused")),
        "fused_loss": model._fused_loss_applies(None),
    }
    parallel.teardown()
    return out


def test_switched_off_the_model_and_step_are_megatrons():
    off = run_in_processes(_built, 1, False)[0]
    assert off == {"embedding_is_megatrons": True, "wgrad_fusion": False, "fused_adamw": False, "fused_loss": False}
    on = run_in_processes(_built, 1, True)[0]
    assert on == {"embedding_is_megatrons": False, "wgrad_fusion": False, "fused_adamw": True, "fused_loss": True}


def _train_both(data_dir: str, out_root: str):
    torch.set_num_threads(1)
    from cosmos_nemo.checkpoint import dist as dist_ckpt
    from cosmos_nemo.data import ARDataConfig
    from cosmos_nemo.models.ar.config import ar_config
    from cosmos_nemo.models.ar.model import build_ar_model
    from cosmos_nemo.training.config import CheckpointConfig, LogConfig, OptimizerConfig, ParallelConfig, TrainerConfig
    from cosmos_nemo.training.trainer import train
    from cosmos_nemo import parallel

    out = {}
    for accelerations in (True, False):
        summary = train(ar_config("tiny", vocab_size=64),
                        ARDataConfig(paths=[data_dir], split_string="9,1,0", micro_batch_size=1, global_batch_size=2,
                                     seed=3),
                        # z-loss on: the fused loss's logsumexp output and megatron's path both carry it
                        OptimizerConfig(lr=2e-3, warmup_steps=1, eps=1e-5, clip_grad=0.5),
                        TrainerConfig(max_steps=5, val_interval=0, z_loss=1e-3, cpu_accelerations=accelerations),
                        CheckpointConfig(output_root=out_root, name=f"accel_{accelerations}", save_interval=0),
                        ParallelConfig(), LogConfig(progress_bar=False, tensorboard=False))
        parallel.setup()
        model = build_ar_model(ar_config("tiny", vocab_size=64))
        dist_ckpt.load_model([model], summary["checkpoint"] + "/model")
        out[accelerations] = (summary["losses"], {k: v.detach().clone() for k, v in model.named_parameters()})
        parallel.teardown()
    return out


@pytest.mark.slow
def test_training_with_and_without_accelerations_agrees(tmp_path):
    from cosmos_nemo.data import write_pattern_dataset

    write_pattern_dataset(tmp_path / "data", 24, grid=(2, 3, 4), vocab_size=64, seed=1, pattern="ramp")
    out = run_in_processes(_train_both, 1, str(tmp_path / "data"), str(tmp_path / "runs"))[0]
    (fast, fast_w), (plain, plain_w) = out[True], out[False]
    assert len(fast) == len(plain) == 5 and fast[-1] < fast[0]
    for a, b in zip(fast, plain):
        assert abs(a - b) <= 1e-5 * abs(b), (fast, plain)
    for key in plain_w:
        np.testing.assert_allclose(fast_w[key], plain_w[key], rtol=1e-5, atol=1e-6, err_msg=key)
