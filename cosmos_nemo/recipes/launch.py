"""Launching a recipe: checks before anything starts, nemo-run executors, and the run itself.

- `preflight(recipe, world_size)`: parallel sizes against the world size and the model's heads/layers,
  the global batch against micro-batch x DP, the data against the model (when the data is on this
  machine), finetune weights present. Every problem is a `LaunchError` with the arithmetic.
- `local_executor(nproc)`: nemo-run `LocalExecutor` with torchrun (CPU: gloo and one thread per rank).
- `slurm_executor(...)`: nemo-run `SlurmExecutor` (pyxis container, one torchrun per node meeting at the
  head node's address through the c10d rendezvous, the NCCL environment of `NCCL_ENV`).
- `launch(recipe, executor, ...)`: run it as a nemo-run experiment whose metadata and logs live in the
  run folder (`<run>/launches/`, or the Slurm job folder), and report failures with the log paths; a
  Slurm job is submitted and left running (detached); `dryrun=True` returns the torchrun command or the
  sbatch script instead. A local launch holds the run folder (`checkpoint.lock`: a second launch on a
  folder that a live job uses is refused), and SIGINT/SIGTERM stop torchrun and every worker
  (`parallel.lifeline`: the workers also stop by themselves if the launcher dies) and return a result
  that says where the last complete checkpoint is.
- `find_experiments(folder)` / `load_experiment(folder, id)`: the experiments a launch recorded, for
  `cosmos-nemo experiment status|logs|cancel` (nemo-run's experiment API).
- `resolve_pretrained(path_or_hub_id)`: a hub id becomes the local path of its downloaded weights.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import fiddle as fdl
import nemo_run as run

from cosmos_nemo.checkpoint import lock as run_lock
from cosmos_nemo.parallel import lifeline


class LaunchError(ValueError):
    """A run that would fail: reported before any process starts."""


@dataclass
class LaunchResult:
    ok: bool
    run_dir: str
    logs: list[str] = field(default_factory=list)
    text: str = ""  # dry run: the command or sbatch script
    stopped_by: Optional[int] = None  # the signal (SIGINT, SIGTERM) that stopped a local run


def run_dir_of(recipe: run.Partial) -> Path:
    ck = recipe.checkpoint
    return Path(ck.output_root) / ck.project / ck.group / ck.name


# --------------------------------------------------------------------------------------------------
# checks before launching


def preflight(recipe: run.Partial, world_size: int, check_data: bool = True) -> list[str]:
    """Validate `recipe` for `world_size` processes; returns notes, raises LaunchError."""
    notes: list[str] = []
    par, model, data = recipe.parallel, recipe.model, recipe.data
    tp, pp, cp = par.tensor, par.pipeline, par.context
    if min(tp, pp, cp) < 1:
        raise LaunchError(f"parallel sizes must be >= 1, got TP={tp} PP={pp} CP={cp}")
    mp = tp * pp * cp
    if world_size % mp:
        raise LaunchError(
            f"world size {world_size} is not divisible by TP x PP x CP = {tp} x {pp} x {cp} = {mp}: launch a multiple "
            f"of {mp} processes (nodes x processes per node), or lower parallel.tensor / parallel.pipeline"
        )
    dp = world_size // mp
    built = fdl.build(model)  # the dataclass's own checks (heads vs groups, vocab) run here
    family = getattr(built, "family", "ar")
    if family == "dit":
        _check_dit_parallel(built, tp, pp, cp)
    elif family == "vlm":
        _check_vlm(built, tp, pp, cp)
    else:
        if cp != 1:
            raise LaunchError("context parallelism is not supported by the AR models: set parallel.context=1")
        for name, value in (("num_attention_heads", built.num_attention_heads), ("num_query_groups", built.num_query_groups)):
            if value % tp:
                raise LaunchError(f"parallel.tensor={tp} must divide model.{name}={value}")
        if built.num_layers % pp:
            raise LaunchError(f"parallel.pipeline={pp} must divide model.num_layers={built.num_layers}")
    mbs, gbs = data.micro_batch_size, data.global_batch_size
    if mbs < 1 or gbs < 1:
        raise LaunchError(f"batch sizes must be >= 1, got micro {mbs}, global {gbs}")
    if gbs % (mbs * dp):
        raise LaunchError(
            f"data.global_batch_size={gbs} is not a multiple of micro_batch_size x DP = {mbs} x {dp} = {mbs * dp} "
            f"(DP = world {world_size} / (TP {tp} x PP {pp})); use a global batch of {_nearest_multiple(gbs, mbs * dp)}"
        )
    notes.append(
        f"world {world_size} = TP {tp} x PP {pp} x DP {dp}; global batch {gbs} = micro {mbs} x DP {dp} x "
        f"{gbs // (mbs * dp)} accumulation steps"
    )
    if recipe.trainer.precision not in ("fp32", "bf16"):
        raise LaunchError(f"trainer.precision must be 'fp32' or 'bf16', got {recipe.trainer.precision!r}")
    peft = recipe.__arguments__.get("peft")
    if peft is not None:
        from cosmos_nemo.peft.lora import LoRAError

        try:
            fdl.build(peft).validate()
        except LoRAError as err:
            raise LaunchError(str(err)) from None
        if recipe.checkpoint.mode != "finetune":
            raise LaunchError("LoRA (peft) trains adapters on a pretrained base: set checkpoint.mode=finetune and "
                              "checkpoint.pretrained (LoRA never starts from random weights)")
    if recipe.checkpoint.mode == "finetune" and not recipe.checkpoint.pretrained:
        raise LaunchError("checkpoint.mode=finetune needs checkpoint.pretrained (a Cosmos .pt, a dist-ckpt folder, "
                          "a run folder or a hub id)")
    if recipe.checkpoint.mode == "pretrain" and recipe.checkpoint.pretrained:
        raise LaunchError(f"checkpoint.pretrained={recipe.checkpoint.pretrained!r} is ignored by checkpoint.mode=pretrain: "
                          "set checkpoint.mode=finetune to start from it, or checkpoint.pretrained=null")
    if not data.paths and not getattr(data, "hub_dataset", None):
        kind = {"dit": "latent dataset", "vlm": "VideoPhy-2 root from `cosmos-nemo prepare videophy2`, or LLaVA-OV "
                "record files"}.get(family, "`cosmos-nemo prepare ar-tokens` output")
        raise LaunchError(f"no training data: set data.paths=[DIR,...] (a {kind})")
    if check_data:
        notes.extend(_check_data(recipe, built))
    return notes


def _nearest_multiple(value: int, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


def _check_dit_parallel(model, tp: int, pp: int, cp: int) -> None:
    """The DiT's parallel layout: TP divides the heads, no pipeline stages, context parallelism on GPUs."""
    if model.num_attention_heads % tp:
        raise LaunchError(f"parallel.tensor={tp} must divide model.num_attention_heads={model.num_attention_heads}")
    if pp != 1:
        raise LaunchError("the DiT does not support pipeline parallelism (its timestep embedding modulates every "
                          "block): set parallel.pipeline=1 and use parallel.tensor / parallel.context")
    if cp != 1 and _cpu_only():
        raise LaunchError("context parallelism of the DiT needs GPUs (Transformer Engine attention): set "
                          "parallel.context=1 on a CPU")


def _check_vlm(model, tp: int, pp: int, cp: int) -> None:
    """The Reasoner trains data-parallel only: every process holds the whole transformers model."""
    if (tp, pp, cp) != (1, 1, 1):
        raise LaunchError(f"the Reasoner (vlm) recipes train data-parallel only: set parallel.tensor=1, "
                          f"parallel.pipeline=1, parallel.context=1 (got TP={tp} PP={pp} CP={cp}); --nproc N gives N "
                          "data-parallel ranks")
    try:
        model.check()
    except ValueError as err:
        raise LaunchError(str(err)) from None
    from cosmos_nemo.models.vlm.processor import torchvision_problem

    problem = torchvision_problem()
    if problem:
        raise LaunchError(problem)


def _check_data(recipe: run.Partial, model) -> list[str]:
    if getattr(model, "family", "ar") == "dit":
        return _check_dit_data(recipe, model)
    if getattr(model, "family", "ar") == "vlm":
        return _check_vlm_data(recipe)
    from cosmos_nemo.data import DataModelMismatch, validate_for_model
    from cosmos_nemo.data.ar_dataset import ARDatasetError
    from cosmos_nemo.data.loader import resolve_dataset_paths

    paths = list(recipe.data.paths)
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise LaunchError(f"data path(s) not found: {', '.join(missing)}")
    try:
        resolved = [str(p) for p in resolve_dataset_paths(paths)]
        return validate_for_model(
            resolved, model.output_vocab_size or model.vocab_size, max_seq_length=model.seq_length,
            split_string=recipe.data.split_string, model_task="video2world" if model.video2world else "base",
            model_embedding_rows=model.vocab_size,
        )
    except (DataModelMismatch, ARDatasetError, ValueError) as err:
        raise LaunchError(f"the data does not fit the model: {err}") from None


def _check_dit_data(recipe: run.Partial, model) -> list[str]:
    from cosmos_nemo.data.dit_dataset import build_dit_dataloaders

    missing = [p for p in recipe.data.paths if not Path(p).exists()]
    if missing:
        raise LaunchError(f"data path(s) not found: {', '.join(missing)}")
    try:
        _, _, notes = build_dit_dataloaders(fdl.build(recipe.data), model)
    except ValueError as err:
        raise LaunchError(f"the data does not fit the model: {err}") from None
    return notes


def _check_vlm_data(recipe: run.Partial) -> list[str]:
    from cosmos_nemo.data.vlm_dataset import DataError, load_records

    data = fdl.build(recipe.data)
    missing = [p for p in data.paths if not Path(p).exists()]
    if missing:
        raise LaunchError(f"data path(s) not found: {', '.join(missing)}")
    if data.hub_dataset:
        return [f"records streamed from {data.hub_dataset} when the run starts"]
    try:
        train, _, notes = load_records(data)
    except DataError as err:
        raise LaunchError(f"the data cannot give a run: {err}") from None
    if len(train) < data.global_batch_size:
        raise LaunchError(f"{len(train)} training records cannot fill one global batch of {data.global_batch_size}: "
                          "lower data.global_batch_size or add data")
    return notes


# --------------------------------------------------------------------------------------------------
# pretrained weights

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(value: str) -> bool:
    return bool(_HUB_ID.match(value)) and not Path(value).exists()


def resolve_pretrained(value: Optional[str]) -> Optional[str]:
    """A local path as is; a hub id (`nvidia/Cosmos-1.0-Autoregressive-4B`) downloaded with
    `huggingface_hub.snapshot_download` to the local path of its released weights (`model.pt`)."""
    if not value or not is_hub_id(value):
        if value and not Path(value).exists():
            raise LaunchError(f"pretrained weights {value!r} not found (a Cosmos .pt/.safetensors, a dist-ckpt folder, "
                              "a run folder, or a hub id such as nvidia/Cosmos-1.0-Autoregressive-4B)")
        return value
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(value, allow_patterns=["model.pt", "*.safetensors", "*.safetensors.index.json",
                                                                "config.json"]))
    except Exception as err:  # offline, gated, unknown repo
        # `org/name` is also how a relative path looks: say that no such path exists here either.
        raise LaunchError(
            f"{value!r} is neither a file or folder here (relative to {Path.cwd()}) nor downloadable from the Hugging "
            f"Face hub ({type(err).__name__}: {str(err).splitlines()[0][:200]}). If it is a path, check it; if it is a "
            f"hub id, download it where there is network (`huggingface-cli download {value} model.pt --local-dir DIR`) and "
            "pass the local path instead: --model_path DIR/model.pt (or checkpoint.pretrained=DIR/model.pt)"
        ) from None
    if (folder / "model.safetensors.index.json").is_file():
        return str(folder)  # sharded weights (a transformers snapshot): the folder
    for pattern in ("model.pt", "*.safetensors"):
        found = sorted(folder.glob(pattern))
        if found:
            return str(found[0])
    raise LaunchError(f"{value!r} downloaded to {folder} holds no model.pt or .safetensors weights")


# --------------------------------------------------------------------------------------------------
# executors


def _cpu_only() -> bool:
    import torch

    return not torch.cuda.is_available()


def local_executor(nproc: int, env: Optional[dict] = None) -> run.LocalExecutor:
    """torchrun with `nproc` processes on this machine; on a CPU each rank gets one thread (2 ranks on 2
    cores would otherwise oversubscribe them with intra-op threads)."""
    env_vars = {"PYTHONUNBUFFERED": "1"}
    if _cpu_only():
        env_vars["OMP_NUM_THREADS"] = "1"
    env_vars.update(env or {})
    return run.LocalExecutor(ntasks_per_node=nproc, launcher="torchrun", env_vars=env_vars)


def parse_mounts(text: Optional[str]) -> list[str]:
    """`SRC:DST[:ro],...` as pyxis container mounts; each must name a source and an absolute target."""
    mounts = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        parts = item.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1].startswith("/") or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            raise LaunchError(f"a mount is SRC:DST or SRC:DST:ro with an absolute DST, got {item!r}")
        mounts.append(item)
    return mounts


# The environment every Slurm rank gets (before --env overrides): what a multi-node megatron run on NCCL needs.
NCCL_ENV = {
    # NCCL on the GPUs, never a silent fallback to gloo on a node whose CUDA is broken: parallel.setup()
    # refuses with the reason instead (parallel.resolve_backend).
    "COSMOS_NEMO_BACKEND": "nccl",
    # a rank whose collective fails or times out ends the job instead of hanging every other rank
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    # megatron-core: kernels and communication issue in program order (required for TP communication overlap)
    "CUDA_DEVICE_MAX_CONNECTIONS": "1",
    # NCCL prints its warnings (network, topology) into the job log; set NCCL_DEBUG=INFO with --env to debug
    "NCCL_DEBUG": "WARN",
}


def parse_env(items: Optional[list[str]]) -> dict[str, str]:
    """`KEY=VALUE` items (the --env flag) as a dict; keys must be environment variable names."""
    env = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise LaunchError(f"--env takes KEY=VALUE with KEY an environment variable name, got {item!r}")
        env[key] = value
    return env


def slurm_executor(
    *,
    account: str,
    partition: str,
    nodes: int,
    gpus_per_node: int,
    time: str = "04:00:00",
    container_image: Optional[str] = None,
    mounts: Optional[list[str]] = None,
    job_dir: str,
    ssh_host: Optional[str] = None,
    ssh_user: Optional[str] = None,
    env: Optional[dict] = None,
) -> run.SlurmExecutor:
    """One torchrun per node (`--ntasks-per-node=1`) that starts `gpus_per_node` ranks, rendezvous at the
    head node's address. `job_dir` must be on a file system the compute nodes see (sbatch script, logs,
    serialised recipe). The container (pyxis) must be an image with cosmos_nemo installed
    (containers/Dockerfile). Every rank gets `NCCL_ENV`, then `env` (which wins)."""
    if nodes < 1 or gpus_per_node < 1:
        raise LaunchError(f"--nodes and --gpus-per-node must be >= 1, got {nodes} and {gpus_per_node}")
    if not account or not partition:
        raise LaunchError("a Slurm launch needs --account and --partition")
    if not re.match(r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$", time):
        raise LaunchError(f"--time must be a Slurm time such as 04:00:00 or 1-00:00:00, got {time!r}")
    # nemo-run puts each experiment in <tunnel job_dir>/<title>/<id>; a local tunnel's experiments must be the
    # ones `launch(base_dir=job_dir)` writes (<job_dir>/experiments/<title>/<id>), or sbatch gets a script path
    # that was never written. Over ssh, job_dir is the cluster's folder and nemo-run copies the experiment there.
    tunnel = (run.SSHTunnel(host=ssh_host, user=ssh_user or os.environ.get("USER", ""), job_dir=job_dir)
              if ssh_host else run.LocalTunnel(job_dir=os.path.join(job_dir, "experiments")))
    return run.SlurmExecutor(
        account=account,
        partition=partition,
        nodes=nodes,
        ntasks_per_node=gpus_per_node,
        gpus_per_node=gpus_per_node,
        time=time,
        container_image=container_image,
        container_mounts=list(mounts or []),
        launcher="torchrun",
        tunnel=tunnel,
        packager=run.Packager(),  # the code comes from the container, not from a copy of this checkout
        env_vars={"PYTHONUNBUFFERED": "1", **NCCL_ENV, **(env or {})},
    )


def world_size_of(executor) -> int:
    return executor.nnodes() * executor.nproc_per_node()


# --------------------------------------------------------------------------------------------------
# the launch


def _dryrun_text(job) -> str:
    info = job._dryrun_info
    request = getattr(info, "request", None)
    if hasattr(request, "materialize"):  # Slurm: the sbatch script
        return request.materialize()
    lines = []
    for role, replicas in getattr(request, "role_params", {}).items():
        for replica in replicas:
            env = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in sorted(replica.env.items()) if k != "PATH")
            lines.append(f"cd {shlex.quote(replica.cwd or os.getcwd())} && {env} " + " ".join(shlex.quote(a) for a in replica.args))
    return "\n".join(lines) if lines else str(info)


def _interpreter_bin_on_path() -> None:
    """nemo-run starts `torchrun` (and torchrun starts `python`) by name from PATH. When cosmos-nemo runs
    as `.venv/bin/cosmos-nemo` or `.venv/bin/python -m cosmos_nemo` without an activated venv, PATH lacks
    the venv's bin folder and the wrong (or no) interpreter would be found: put ours first."""
    here = os.path.dirname(os.path.abspath(sys.executable))
    parts = os.environ.get("PATH", "").split(os.pathsep)
    if not parts or parts[0] != here:
        os.environ["PATH"] = os.pathsep.join([here] + [p for p in parts if p and p != here])
    if shutil.which("torchrun") is None:
        raise RuntimeError(f"torchrun was not found next to {sys.executable} or on PATH; "
                           "install torch in this environment (bash scripts/setup.sh)")


def launch(recipe: run.Partial, executor, name: Optional[str] = None, dryrun: bool = False,
           base_dir: Optional[str] = None, tail_logs: bool = True) -> LaunchResult:
    """Run `recipe` on `executor` as a nemo-run experiment; its metadata goes to `base_dir` (default
    `<run folder>/launches`). Returns whether it succeeded and where its logs are."""
    run_dir = run_dir_of(recipe)
    name = name or recipe.checkpoint.name
    if dryrun:
        # nemo-run materialises the experiment to print it; keep that out of the (not yet existing) run folder
        with tempfile.TemporaryDirectory(prefix="cosmos_nemo_dryrun_") as scratch:
            with run.Experiment(name, executor=executor, base_dir=scratch, log_level="WARN",
                                enable_goodbye_message=False) as exp:
                exp.add(recipe, name=name, tail_logs=False)
                exp.dryrun(log=False)
                return LaunchResult(ok=True, run_dir=str(run_dir), text=_dryrun_text(exp.jobs[0]))
    detach = isinstance(executor, run.SlurmExecutor)  # submitted, not waited for: `cosmos-nemo experiment ...`
    if detach:
        folder_lock = None  # the job's rank 0 holds the run folder on the cluster (training/logger.py)
    else:
        try:
            folder_lock = run_lock.acquire(run_dir)
        except run_lock.RunFolderBusy as err:
            raise LaunchError(str(err)) from None
        if folder_lock.took_over:
            print(f"note: took over the run folder from a job that is no longer running: "
                  f"{run_lock.describe(folder_lock.took_over)}", flush=True)
        executor.env_vars.update({**lifeline.launcher_env(), run_lock.TOKEN_ENV: folder_lock.token})
    if base_dir is None:
        base_dir = str(run_dir / "launches")
    try:
        Path(base_dir).mkdir(parents=True, exist_ok=True)
        _interpreter_bin_on_path()
        with lifeline.stopping_children() if not detach else contextlib.nullcontext():
            with run.Experiment(name, executor=executor, base_dir=base_dir, log_level="WARN",
                                enable_goodbye_message=False) as exp:
                exp.add(recipe, name=name, tail_logs=tail_logs and not detach)
                if detach:
                    exp.run(detach=True)
                else:
                    exp.run(sequential=True)
    except lifeline.StopRequested as stop:
        return _stopped_result(run_dir, base_dir, stop)
    finally:
        if folder_lock is not None:
            folder_lock.release()
    job = exp.jobs[0]
    if detach:
        _, _, app = job.handle.partition("://")
        job_id = app.split("/")[1] if app.count("/") >= 1 else app
        script = sorted(glob.glob(os.path.join(job.executor.experiment_dir, "*_sbatch.sh")))
        return LaunchResult(ok=bool(job_id), run_dir=str(run_dir), logs=script,
                            text=f"SUBMITTED as Slurm job {job_id} (experiment {exp._id} in {base_dir})")
    status = str(job.status(exp._runner))
    logs = sorted(glob.glob(os.path.join(job.executor.job_dir, "**", "*.log"), recursive=True))
    logs = [p for p in logs if p.endswith(("combined.log", "stderr.log"))] or logs
    return LaunchResult(ok=status.startswith("SUCCEEDED"), run_dir=str(run_dir), logs=logs, text=status)


def _stopped_result(run_dir: Path, base_dir: str, stop: "lifeline.StopRequested") -> LaunchResult:
    from cosmos_nemo.checkpoint.run import latest_checkpoint

    latest = latest_checkpoint(run_dir / "checkpoints")
    ended = f"torchrun and its workers ({stop.stopped} processes) have ended" if stop.stopped else "nothing was running yet"
    where = (f"the last complete checkpoint is {latest}; run the same command to resume from it" if latest else
             "no checkpoint was completed: the next run starts from the beginning")
    logs = sorted(glob.glob(os.path.join(base_dir, "**", "*.log"), recursive=True))
    logs = [p for p in logs if p.endswith(("combined.log", "stderr.log"))] or logs
    return LaunchResult(ok=False, run_dir=str(run_dir), logs=logs, stopped_by=stop.signum,
                        text=f"stopped by {stop.signame}: {ended}; {where}")


# --------------------------------------------------------------------------------------------------
# experiments after the launch (nemo-run's experiment API)


def find_experiments(folder: str) -> list[Path]:
    """The experiment folders a launch recorded under `folder`, oldest first: `folder` is the `base_dir` of
    `launch` (a run folder's `launches/`, or a Slurm --job-dir), a run folder (its `launches/` is used), or
    one experiment's own folder."""
    root = Path(folder)
    if (root / "_CONFIG").is_file():
        return [root]
    for base in (root, root / "launches"):
        found = [d for d in base.glob("experiments/*/*") if (d / "_CONFIG").is_file()]
        if found:
            return sorted(found, key=lambda d: (d.stat().st_mtime, d.name))
    return []


def load_experiment(folder: str, experiment_id: Optional[str] = None) -> run.Experiment:
    """The latest experiment under `folder` (or the one named `experiment_id`), rebuilt by nemo-run."""
    found = find_experiments(folder)
    if not found:
        raise LaunchError(f"no nemo-run experiment under {folder}: give the run folder, its launches/ folder or the "
                          "Slurm --job-dir of a `cosmos-nemo train` launch")
    if experiment_id:
        chosen = [d for d in found if d.name == experiment_id]
        if not chosen:
            raise LaunchError(f"no experiment {experiment_id!r} under {folder}; found: {', '.join(d.name for d in found)}")
        exp_dir = chosen[0]
    else:
        exp_dir = found[-1]
    from nemo_run import config as nr_config

    home = nr_config.get_nemorun_home()
    nr_config.set_nemorun_home(str(exp_dir.parents[2]))  # from_id looks in <home>/experiments/<title>/<id>
    try:
        return run.Experiment.from_id(exp_dir.name)
    finally:
        nr_config.set_nemorun_home(home)
