"""The run folder and crash-safe training checkpoints, for every model family.

Layout (DESIGN.md, "Run folder"):

    <output_root>/<project>/<group>/<name>/
        config.yaml  launch_info.yaml  job_env.yaml  tensorboard/
        checkpoints/latest_checkpoint.txt            -> "iter_000000200"
        checkpoints/iter_000000200/
            model/       megatron dist-ckpt of the weights only (conversion reads this alone)
            optim/       megatron dist-ckpt of the optimizer state
            scheduler/   scheduler.json (step, lr)
            trainer/     trainer.json (iteration, consumed samples) + rng_rank<r>.safetensors per rank
            dataloader/  rank<r>.json: each rank's data position
            ema/         (with trainer.ema_decay) dist-ckpt of the EMA weights, same keys as model/

A checkpoint is written under `iter_<N>.tmp-<token>/` and renamed to `iter_<N>/` only once every rank
has finished writing; `latest_checkpoint.txt` is replaced (write to a temp file, fsync, rename) after
that. So the pointer only ever names a complete folder, and a run killed at any moment, even inside
`dist_checkpointing.save`, leaves at worst a `*.tmp-*` folder that resume ignores and the next save
removes. `keep_last` pruning runs after the pointer moves and never deletes the folder it names.

`COSMOS_NEMO_KILL_AT=<point>` is a test hook: the process SIGKILLs itself at that point of a save
(`model_shard`: inside dist_checkpointing.save, the model's shards written but not its metadata; `after_model`,
`after_optim`, `before_rename`, `before_pointer`), once `COSMOS_NEMO_KILL_STEP` (if set) is reached.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from safetensors.torch import save_file

from cosmos_nemo.checkpoint import dist as dist_ckpt
from cosmos_nemo.io.atomic import atomic_write_text
from cosmos_nemo.io.tensors import read_safetensors

POINTER = "latest_checkpoint.txt"
_ITER_RE = re.compile(r"^iter_(\d{9})$")


def iter_name(step: int) -> str:
    return f"iter_{step:09d}"


def run_dir(output_root: str, project: str, group: str, name: str) -> Path:
    return Path(output_root) / project / group / name


def _kill_point(point: str, step: int) -> None:
    if os.environ.get("COSMOS_NEMO_KILL_AT") == point:
        at = os.environ.get("COSMOS_NEMO_KILL_STEP")
        if at is None or int(at) == step:
            os.kill(os.getpid(), signal.SIGKILL)


def is_complete(folder: Path) -> bool:
    return _ITER_RE.match(folder.name) is not None and all(
        (folder / part).is_dir() for part in ("model", "optim", "scheduler", "trainer", "dataloader")
    ) and (folder / "model" / ".metadata").is_file() and (folder / "optim" / ".metadata").is_file()


def latest_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The folder the pointer names, if it is complete; else the newest complete iter_ folder."""
    pointer = checkpoints_dir / POINTER
    if pointer.is_file():
        target = checkpoints_dir / pointer.read_text().strip()
        if is_complete(target):
            return target
    complete = sorted((p for p in checkpoints_dir.glob("iter_*") if is_complete(p)), key=lambda p: p.name)
    return complete[-1] if complete else None


def _kill_inside_dist_ckpt(step: int):
    """Context for the `model_shard` kill point: SIGKILL inside `dist_checkpointing.save`, once the model's
    shard files are written and before the folder's metadata is (megatron collects its writers' results in the
    saving process, whichever processes or threads wrote the files)."""
    import contextlib

    if os.environ.get("COSMOS_NEMO_KILL_AT") != "model_shard":
        return contextlib.nullcontext()
    from megatron.core.dist_checkpointing.strategies.filesystem_async import FileSystemWriterAsync

    original = FileSystemWriterAsync.retrieve_write_results

    def collect_then_die(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        _kill_point("model_shard", step)
        return result

    @contextlib.contextmanager
    def patched():
        FileSystemWriterAsync.retrieve_write_results = collect_then_die
        try:
            yield
        finally:
            FileSystemWriterAsync.retrieve_write_results = original

    return patched()


def save_checkpoint(checkpoints_dir: Path, step: int, model_chunks, optimizer, scheduler_state: dict,
                    trainer_state: dict, dataloader_state: dict, keep_last: int = 2, ema=None) -> Path:
    """Write `iter_<step>` atomically (collective over all ranks) and move the pointer to it."""
    rank = dist.get_rank()
    token = [secrets.token_hex(4) if rank == 0 else None]
    dist.broadcast_object_list(token, src=0)
    final = checkpoints_dir / iter_name(step)
    tmp = checkpoints_dir / f"{final.name}.tmp-{token[0]}"
    if rank == 0:
        checkpoints_dir.mkdir(parents=True, exist_ok=True)
        for stale in checkpoints_dir.glob("iter_*.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        for part in ("scheduler", "trainer", "dataloader"):
            (tmp / part).mkdir(parents=True)
    dist.barrier()

    with _kill_inside_dist_ckpt(step):
        dist_ckpt.save_model(model_chunks, tmp / "model")
    _kill_point("after_model", step)
    # dist_checkpointing.save consumes the sharded dict it is given (factories are applied in place), so
    # the optimizer's mapping to model parameters is built from a fresh one.
    model_sd = dist_ckpt.model_sharded_state_dict(model_chunks)
    dist_ckpt.save_sharded(optimizer.sharded_state_dict(model_sd), tmp / "optim")
    _kill_point("after_optim", step)
    if ema is not None:
        ema.save(model_chunks, tmp / "ema")

    rng = {"cpu": torch.get_rng_state()}
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    for name, state in get_cuda_rng_tracker().get_states().items():
        rng[f"tracker.{name}"] = state.clone() if torch.is_tensor(state) else torch.tensor(state)
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file({k: v.contiguous().cpu() for k, v in rng.items()}, str(tmp / "trainer" / f"rng_rank{rank}.safetensors"))
    (tmp / "dataloader" / f"rank{rank}.json").write_text(json.dumps(dataloader_state))
    if rank == 0:
        (tmp / "scheduler" / "scheduler.json").write_text(json.dumps(scheduler_state))
        (tmp / "trainer" / "trainer.json").write_text(json.dumps(dict(trainer_state, world_size=dist.get_world_size())))
    dist.barrier()
    _kill_point("before_rename", step)
    if rank == 0:
        if final.exists():  # the same step saved again (e.g. a rerun): replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        _kill_point("before_pointer", step)
        atomic_write_text(checkpoints_dir / POINTER, final.name + "\n")
        if keep_last > 0:
            complete = sorted((p for p in checkpoints_dir.glob("iter_*") if is_complete(p)), key=lambda p: p.name)
            for old in complete[:-keep_last]:
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def load_checkpoint(folder: Path, model_chunks, optimizer, ema=None) -> dict:
    """Restore model, optimizer, RNG (and EMA); return {"scheduler", "trainer", "dataloader"} states."""
    rank = dist.get_rank()
    if ema is not None:
        if not (folder / "ema" / ".metadata").is_file():
            raise FileNotFoundError(f"{folder} has no ema/ checkpoint, but trainer.ema_decay / ema_sigma_rel is set")
        ema.load(model_chunks, folder / "ema")
    dist_ckpt.load_model(model_chunks, folder / "model")
    model_sd = dist_ckpt.model_sharded_state_dict(model_chunks)
    optim_state = dist_ckpt.load_sharded(optimizer.sharded_state_dict(model_sd, is_loading=True), folder / "optim")
    optimizer.load_state_dict(optim_state)
    trainer = json.loads((folder / "trainer" / "trainer.json").read_text())
    rng_file = folder / "trainer" / f"rng_rank{rank}.safetensors"
    same_layout = trainer.get("world_size") == dist.get_world_size() and rng_file.is_file()
    if same_layout:
        # Exact resume: every rank gets back its own generator states. At another layout the streams
        # are reseeded from the run seed instead (dropout-free models are unaffected).
        rng = read_safetensors(rng_file, required=("cpu",))  # a damaged file: an error naming it
        torch.set_rng_state(rng["cpu"])
        from megatron.core.tensor_parallel import get_cuda_rng_tracker

        tracker = get_cuda_rng_tracker()
        states = {k.split(".", 1)[1]: v for k, v in rng.items() if k.startswith("tracker.")}
        if states:
            tracker.set_states(states)
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    loader_file = folder / "dataloader" / f"rank{rank}.json"
    if not loader_file.is_file():
        loader_file = folder / "dataloader" / "rank0.json"
    return {
        "scheduler": json.loads((folder / "scheduler" / "scheduler.json").read_text()),
        "trainer": trainer,
        "dataloader": json.loads(loader_file.read_text()),
    }


# ---------------------------------------------------------------------------------------------------
# Starting weights, run files, and the model config a run folder records


def resolve_model_folder(source) -> Path | None:
    """The dist-ckpt model folder `source` names: a run folder or its `checkpoints/` folder (the latest
    complete checkpoint), an `iter_*` folder, or a `model/` / `ema/` folder itself; None when `source` is
    none of these."""
    path = Path(source)
    for checkpoints in (path / "checkpoints", path):  # a run folder, or its checkpoints/ folder
        if checkpoints.is_dir() and (checkpoints.name == "checkpoints" or (checkpoints / POINTER).is_file()):
            # Only the weights are read: the folder the pointer names needs its model/ part alone (a
            # converted checkpoint has nothing else), else the newest complete checkpoint.
            pointer = checkpoints / POINTER
            named = checkpoints / pointer.read_text().strip() / "model" if pointer.is_file() else None
            if named is not None and (named / ".metadata").is_file():
                return named
            latest = latest_checkpoint(checkpoints)
            if latest is None:
                raise FileNotFoundError(f"{checkpoints} holds no complete checkpoint")
            return latest / "model"
    if path.is_dir() and (path / "model" / ".metadata").is_file():
        return path / "model"
    if path.is_dir() and (path / ".metadata").is_file():
        return path
    return None


def load_pretrained(model_chunks, family, model_cfg, source: str) -> str:
    """Fill the chunks with starting weights: a dist-ckpt (a run folder, an `iter_*` folder or a `model/`
    folder, at any TP/PP) or the family's released checkpoint file. Returns a note for the run log."""
    folder = resolve_model_folder(source)
    if folder is not None and not (Path(folder) / "metadata.json").is_file():
        folder = None  # a torch DCP folder without megatron's metadata.json: a released checkpoint (Predict2.5)
    if folder is not None:
        check = getattr(family, "check_dist_ckpt_start", None)
        if check is not None:
            check(model_cfg, str(folder))
        dist_ckpt.load_model(model_chunks, folder)
        return f"initialised from dist-ckpt {folder}"
    if Path(source).exists():  # a file, or a released folder (a DiT's diffusers or DCP folder)
        return family.load_released(dist_ckpt.bare_model(model_chunks[0]), model_cfg, str(source))
    raise FileNotFoundError(
        f"pretrained weights {source!r} not found: pass a released checkpoint file (.pt/.safetensors), a dist-ckpt "
        "model/ folder, an iter_* folder, or a run folder with checkpoints/"
    )


def plain_data(value):
    """`value` as plain YAML/JSON data (dicts, lists, numbers, strings; anything else as its string)."""
    if isinstance(value, dict):
        return {str(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(v) for v in value]
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)


def write_run_files(folder: Path, configs: dict, launch: dict) -> None:
    """`config.yaml` (every config of the run, as plain data), `launch_info.yaml` and `job_env.yaml`."""
    import dataclasses

    as_data = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in configs.items()}
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "config.yaml", yaml.safe_dump(plain_data(as_data), sort_keys=False))
    atomic_write_text(folder / "launch_info.yaml", yaml.safe_dump(plain_data(launch), sort_keys=False))
    keep = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
    env = {k: v for k, v in sorted(os.environ.items()) if k in keep or k.startswith(("SLURM_", "TORCHELASTIC_"))}
    atomic_write_text(folder / "job_env.yaml", yaml.safe_dump(env, sort_keys=False))


def read_model_config(folder):
    """The model config a run was trained with, rebuilt from its `config.yaml` by the family it names
    (`model.family`; run folders written before families existed are AR runs)."""
    from cosmos_nemo.models.family import get_family

    path = Path(folder) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass a run folder written by `cosmos-nemo train`")
    fields = (yaml.safe_load(path.read_text()) or {}).get("model")
    if not isinstance(fields, dict):
        raise ValueError(f"{path} has no `model:` section")
    fields = dict(fields)
    family = get_family(fields.get("family") or "ar")
    return family, family.config_from_dict(fields)
