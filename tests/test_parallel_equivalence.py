"""TP=2, PP=2 and DP=2 on 2 gloo processes against 1 process, on the tiny AR model through `train()`.

Every run goes through `cosmos_nemo.training.trainer.train` (megatron DDP, optimizer, schedules,
dist-ckpt) in fresh processes, in fp32, on the same synthetic AR token dataset, and

- starts from the same weights: a dist-ckpt written once by one process, loaded by every run as
  `checkpoint.pretrained` (mode "finetune"). Seeding is not enough: megatron initialises each TP shard
  from its rank's RNG stream, so a TP=2 model built from the same seed holds other weights than a TP=1
  one. The first step's loss, computed before any update, checks that the start really is the same;
- sees the same global batches (the sampler's global batch does not depend on the layout: DP ranks read
  disjoint slices of it, and 1 process reads it as gradient-accumulation micro-batches).

So per-step losses must agree up to float reduction order (relative 1e-5), and so must the final weights,
read back from each run's last `checkpoints/iter_*/model` dist-ckpt into one 1-process model and compared
tensor by tensor. Checkpoints cross TP sizes: a run saved at TP=2 continues at TP=1 (and the reverse) with
the uninterrupted run's losses.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cosmos_nemo.data import ARDataConfig, write_pattern_dataset
from cosmos_nemo.models.ar.config import ar_config
from cosmos_nemo.parallel.launch import run_in_processes
from cosmos_nemo.training.config import CheckpointConfig, LogConfig, OptimizerConfig, ParallelConfig, TrainerConfig

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

VOCAB = 64
STEPS = 5
BRANCH_STEP = 3  # the 1-process and TP=2 runs also save here; the cross-TP continuations start from it
LR = 3e-3
RTOL = 1e-5
# Adam divides each entry's update by its own gradient scale, sqrt(v) + eps. With the default eps 1e-8, an
# entry whose gradient is tiny still takes a near lr-sized step, and the float reduction-order noise in that
# gradient (different for TP/DP layouts) is amplified with it: TP=2's final weights then differ from one
# process's by ~2e-5 relative, a comparison of noise. An eps above those tiny gradients keeps their updates
# proportional to the gradient (~1e-6 relative then); entries with real gradients (>> eps) train as before.
ADAM_EPS = 1e-5


def _model():
    return ar_config("tiny", vocab_size=VOCAB)


def _write_initial_weights(folder: str) -> None:
    """The shared starting point: a freshly initialised 1-process model saved as a megatron dist-ckpt."""
    import os

    from megatron.core import dist_checkpointing

    from cosmos_nemo import parallel
    from cosmos_nemo.models.ar.model import build_ar_model

    parallel.setup(seed=11)
    model = build_ar_model(_model())
    os.makedirs(folder)
    dist_checkpointing.save(model.sharded_state_dict(), folder)
    parallel.teardown()


def _full_states(folders: list[str]) -> list[dict]:
    """Each dist-ckpt model folder loaded into one 1-process (TP=PP=1) model: every tensor, gathered.

    Runs in a process of its own group of one (a worker of a finished multi-process run may call it: the
    torchrun variables are hidden meanwhile, so `parallel.setup` forms a 1-process group)."""
    import os

    from megatron.core import dist_checkpointing

    from cosmos_nemo import parallel
    from cosmos_nemo.models.ar.model import build_ar_model

    saved = {k: os.environ.pop(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
             if k in os.environ}
    try:
        parallel.setup()
        model = build_ar_model(_model())
        states = []
        for folder in folders:
            loaded = dist_checkpointing.load(model.sharded_state_dict(), folder, strict="raise_all")
            model.load_state_dict(loaded, strict=True)
            states.append({k: v.detach().clone().double().numpy() for k, v in model.state_dict().items()
                           if torch.is_tensor(v) and "_extra_state" not in k})
        parallel.teardown()
    finally:
        os.environ.update(saved)
    return states


def relative_differences(state: dict, ref: dict) -> dict:
    """|a - b| / |b| (Frobenius norms) for every tensor of two full state dicts with the same keys."""
    assert state.keys() == ref.keys(), sorted(set(state) ^ set(ref))
    out = {}
    for key, b in ref.items():
        a = state[key]
        assert a.shape == b.shape, (key, a.shape, b.shape)
        scale = np.linalg.norm(b)
        out[key] = float(np.linalg.norm(a - b) / scale) if scale > 0 else float(np.abs(a).max())
    return out


def _train(data_dir: str, out_root: str, name: str, init: str, tp: int = 1, pp: int = 1, save_interval: int = 0,
           write_init: bool = False, compare_to: str | None = None) -> dict:
    """One training run through `train()`. With `write_init`, first write the shared initial weights to
    `init` (and report how far the run moved every tensor from them); with `compare_to` (a dist-ckpt model
    folder), rank 0 reports each final tensor's relative difference from that folder's."""
    torch.set_num_threads(1)
    from cosmos_nemo.training.trainer import train

    if write_init:
        _write_initial_weights(init)
    out = train(
        _model(),
        ARDataConfig(paths=[data_dir], split_string="1,0,0", micro_batch_size=1, global_batch_size=4, seed=5),
        OptimizerConfig(lr=LR, warmup_steps=1, eps=ADAM_EPS, schedule="cosine"),
        TrainerConfig(max_steps=STEPS, val_interval=0, seed=3),
        CheckpointConfig(output_root=out_root, name=name, save_interval=save_interval, keep_last=0,
                         mode="finetune", pretrained=init),
        ParallelConfig(tensor=tp, pipeline=pp),
        LogConfig(progress_bar=False, tensorboard=False),
    )
    first_rank = int(os.environ.get("RANK", 0)) == 0
    final = str(Path(out["checkpoint"]) / "model")
    if first_rank and write_init:
        start, end = _full_states([init, final])
        out["moved"] = relative_differences(end, start)
    if first_rank and compare_to:
        ref, end = _full_states([compare_to, final])
        out["weight_differences"] = relative_differences(end, ref)
    return out


def _train_kw(kwargs: dict) -> dict:
    return _train(**kwargs)


class Setup:
    def __init__(self, root: Path):
        self.root = root
        self.data = str(root / "data")
        self.runs = str(root / "runs")
        self.init = str(root / "init")
        self.reference: dict = {}

    def run_dir(self, name: str) -> Path:
        # The run-folder contract (DESIGN.md): <output_root>/<project>/<group>/<name>/
        return Path(self.runs) / "cosmos_nemo" / "default" / name

    @property
    def reference_model(self) -> str:
        return str(Path(self.reference["checkpoint"]) / "model")

    def launch(self, nprocs: int, name: str, **kwargs) -> dict:
        kwargs = dict(data_dir=self.data, out_root=self.runs, name=name, init=self.init, **kwargs)
        out = run_in_processes(_train_kw, nprocs, kwargs)
        assert all(o["losses"] == out[0]["losses"] for o in out)  # every rank reports the global loss
        return out[0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Setup:
    s = Setup(tmp_path_factory.mktemp("equiv"))
    write_pattern_dataset(s.data, 40, grid=(2, 4, 4), vocab_size=VOCAB, seed=0, pattern="ramp")
    s.reference = s.launch(1, "reference", write_init=True, save_interval=BRANCH_STEP)
    return s


def _assert_losses_close(losses, ref, first_step: int = 1):
    assert len(losses) == len(ref) >= 1
    for step, (a, b) in enumerate(zip(losses, ref), start=first_step):
        assert abs(a - b) <= RTOL * abs(b), f"step {step}: {a} vs {b} (relative {abs(a - b) / abs(b):.2e})"


def _assert_same_run(out: dict, setup: Setup) -> None:
    _assert_losses_close(out["losses"], setup.reference["losses"])
    diffs = out["weight_differences"]
    assert len(diffs) > 10 and diffs.keys() == setup.reference["moved"].keys()
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= RTOL, f"final weights differ: {worst}: |a - b| / |b| = {diffs[worst]:.2e} > {RTOL}"


def test_reference_trains(setup):
    # Not a parallel check: the shared reference must actually train, or the comparisons are vacuous.
    ref = setup.reference
    assert len(ref["losses"]) == ref["step"] == STEPS
    assert ref["losses"][-1] < ref["losses"][0] - 0.5, ref["losses"]
    # Every tensor moved far beyond the tolerance the layouts are held to.
    still = {k: v for k, v in ref["moved"].items() if v < 100 * RTOL}
    assert not still, still


def test_tp2_matches_one_process(setup):
    out = setup.launch(2, "tp2", tp=2, save_interval=BRANCH_STEP, compare_to=setup.reference_model)
    _assert_same_run(out, setup)


def test_pp2_matches_one_process(setup):
    # 2 layers over 2 stages, 4 micro-batches per global batch through megatron's 1F1B schedule.
    out = setup.launch(2, "pp2", pp=2, compare_to=setup.reference_model)
    _assert_same_run(out, setup)


def test_dp2_matches_one_process(setup):
    # World 2, TP = PP = 1: DP = 2, each rank 2 of the 4 micro-batches of every global batch.
    out = setup.launch(2, "dp2", compare_to=setup.reference_model)
    _assert_same_run(out, setup)


def _branch(setup: Setup, source: str, name: str) -> None:
    """A copy of run `source` as it was after its save at BRANCH_STEP: the later checkpoints dropped and
    the pointer (checkpoints/latest_checkpoint.txt, DESIGN.md's run-folder contract) on that one."""
    src, dst = setup.run_dir(source), setup.run_dir(name)
    shutil.copytree(src, dst)
    ckpts = dst / "checkpoints"
    keep = f"iter_{BRANCH_STEP:09d}"
    for later in ckpts.glob("iter_*"):
        if later.name != keep:
            shutil.rmtree(later)
    assert (ckpts / keep / "model" / ".metadata").is_file()
    (ckpts / "latest_checkpoint.txt").write_text(keep + "\n")


def test_dist_ckpt_saved_at_tp2_continues_at_tp1(setup):
    if not setup.run_dir("tp2").is_dir():  # run alone (-k): make the TP=2 run first
        setup.launch(2, "tp2", tp=2, save_interval=BRANCH_STEP)
    _branch(setup, "tp2", "tp2_then_tp1")
    # Resumes model, optimizer, schedule and data position from the TP=2 checkpoint, in one process.
    out = setup.launch(1, "tp2_then_tp1")
    _assert_losses_close(out["losses"], setup.reference["losses"][BRANCH_STEP:], first_step=BRANCH_STEP + 1)


def test_dist_ckpt_saved_at_tp1_continues_at_tp2(setup):
    _branch(setup, "reference", "tp1_then_tp2")
    out = setup.launch(2, "tp1_then_tp2", tp=2)
    _assert_losses_close(out["losses"], setup.reference["losses"][BRANCH_STEP:], first_step=BRANCH_STEP + 1)
