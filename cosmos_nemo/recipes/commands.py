"""`cosmos-nemo train RECIPE [a.b=value ...]`: build a recipe, apply overrides, check it, launch it;
`cosmos-nemo experiment status|logs|cancel FOLDER`: what became of a launch (nemo-run's experiment API)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

_EPILOG = """examples:
  cosmos-nemo train --list
  cosmos-nemo train cosmos_ar_tiny_finetune data.paths=[./tokens] --nproc 2 parallel.tensor=2
  cosmos-nemo train cosmos_ar_4b_finetune data.paths=[/data/tokens] checkpoint.output_root=/runs \\
      checkpoint.name=my_4b trainer.max_steps=1000 optim.lr=5e-5 checkpoint.pretrained=/ckpts/4B/model.pt --nproc 8
  cosmos-nemo train cosmos_ar_4b_tokenizer_swap --recipe-arg frames=17 --recipe-arg height=320 \\
      --recipe-arg width=512 data.paths=[./my_4x8x8_tokens] --nproc 8 parallel.tensor=8
  cosmos-nemo train cosmos_ar_12b_finetune data.paths=[/data/tokens] --executor slurm --nodes 4 \\
      --gpus-per-node 8 --account ACCT --partition batch --time 04:00:00 \\
      --container-image nvcr.io/ORG/cosmos-nemo:latest --mounts /lustre/data:/data \\
      --job-dir /lustre/jobs --env NCCL_SOCKET_IFNAME=ib0 --dryrun
  cosmos-nemo experiment status /lustre/jobs      # then: experiment logs / experiment cancel
  cosmos-nemo train --sft-toml examples/toml/dit_sft.toml --nproc 8 trainer.max_iter=100   # NVIDIA's SFT TOML

Slurm: the parallel sizes and batch sizes are checked against nodes x gpus-per-node before anything is
submitted; the job runs one torchrun per node (c10d rendezvous at the head node, port 29500) inside the
container, with NCCL's environment (COSMOS_NEMO_BACKEND=nccl, TORCH_NCCL_ASYNC_ERROR_HANDLING=1,
CUDA_DEVICE_MAX_CONNECTIONS=1, NCCL_DEBUG=WARN; --env adds or overrides). A submission returns at once.

--toml FILE holds recipe overrides as sections of the recipe's own configs ([trainer] max_steps = 100); --sft-toml
FILE is NVIDIA's structured Cosmos3 SFT TOML ([job] experiment names the recipe; reference field names), see README.

every field of a recipe is changed by a dotted override (or --toml); --recipe-arg is only for the
tokenizer-swap recipes' tokenizer, frames, height, width, tokenizer_vocab_size and resize_vocab, from
which the latent grid and the vocabulary are derived (--list shows each recipe's arguments).
"""


def _parse_recipe_args(items: list[str]) -> dict[str, str]:
    from cosmos_nemo.recipes.overrides import split_override

    return dict(split_override(item) for item in items or [])


def _train(args: argparse.Namespace) -> int:
    # The recipes (megatron-core) and the launcher (nemo-run) take ~8 s to import: they are imported only once
    # the arguments and any --sft-toml file are checked, so a mistake there is reported at once.
    from cosmos_nemo.recipes.overrides import apply_overrides, apply_toml

    if args.list or not (args.recipe or args.sft_toml):
        from cosmos_nemo.recipes.registry import list_recipes, recipe_arguments

        for name, summary in list_recipes():
            print(f"{name:34s} {summary}")
            arguments = recipe_arguments(name)
            if arguments:
                shown = ", ".join(f"{key}={default}" for key, (_, default) in arguments.items())
                print(f"{'':34s}   --recipe-arg: {shown}")
        return 0 if args.list else 2
    try:
        if args.sft_toml:
            recipe, overrides = _from_sft_toml(args)
        else:
            from cosmos_nemo.recipes.registry import build_recipe

            overrides = args.overrides
            recipe = build_recipe(args.recipe, _parse_recipe_args(args.recipe_arg))
            if args.toml:
                apply_toml(recipe, args.toml)
            apply_overrides(recipe, overrides)  # the command line wins over the file
        keys = {item.split("=", 1)[0].strip() for item in overrides}
        if "checkpoint.pretrained" in keys and "checkpoint.mode" not in keys:
            # weights given on the command line mean "start from them"
            recipe.checkpoint.mode = "finetune" if recipe.checkpoint.pretrained else "pretrain"
        from cosmos_nemo.recipes import launch as L

        if args.executor == "slurm":
            missing = [flag for flag, value in (("--account", args.account), ("--partition", args.partition)) if not value]
            if missing:
                raise L.LaunchError(f"--executor slurm needs {' and '.join(missing)}")
            job_dir = str(Path(args.job_dir or (L.run_dir_of(recipe) / "launches")).absolute())
            executor = L.slurm_executor(
                account=args.account, partition=args.partition, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                time=args.time, container_image=args.container_image, mounts=L.parse_mounts(args.mounts),
                job_dir=job_dir, ssh_host=args.ssh_host, ssh_user=args.ssh_user, env=L.parse_env(args.env),
            )
            world = args.nodes * args.gpus_per_node
            # where the experiment's record lives on this machine (`cosmos-nemo experiment ...` reads it)
            if args.ssh_host:
                from nemo_run.config import get_nemorun_home

                base_dir = get_nemorun_home()
            else:
                base_dir = job_dir
            if recipe.parallel.tensor > args.gpus_per_node:
                print(f"note: parallel.tensor={recipe.parallel.tensor} spans {recipe.parallel.tensor // args.gpus_per_node} "
                      f"nodes of {args.gpus_per_node} GPUs: tensor-parallel all-reduces then cross the network; "
                      "keep TP within a node and use PP or DP across nodes")
        else:
            if args.nproc < 1:
                raise L.LaunchError(f"--nproc must be >= 1, got {args.nproc}")
            executor = L.local_executor(args.nproc, env=L.parse_env(args.env))
            world = args.nproc
            base_dir = None
        # Slurm data and weights usually live on the cluster: check them only when they are here.
        on_cluster = args.executor == "slurm"
        data_here = all(Path(p).exists() for p in recipe.data.paths)
        for note in L.preflight(recipe, world, check_data=not on_cluster or data_here):
            print(f"note: {note}")
        pretrained = recipe.checkpoint.pretrained
        if pretrained and L.is_hub_id(pretrained):
            if args.dryrun:
                print(f"note: {pretrained} is a hub id: it is downloaded when the run is launched")
            else:
                recipe.checkpoint.pretrained = L.resolve_pretrained(pretrained)
                print(f"note: {pretrained} -> {recipe.checkpoint.pretrained}"
                      + (" (the nodes must see this path: put HF_HOME on a shared file system)" if on_cluster else ""))
        elif pretrained and not on_cluster:
            L.resolve_pretrained(pretrained)  # refuses a local path that does not exist
    except (KeyError, ValueError) as err:  # OverrideError, LaunchError, RecipeError and SFTConfigError included
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2

    if args.dryrun:
        print(f"# recipe {args.recipe or args.sft_toml}\n{recipe}\n")
        result = L.launch(recipe, executor, name=args.name, dryrun=True)
        print(result.text)
        print(f"\n# run folder: {result.run_dir}")
        return 0
    if args.direct:
        import fiddle as fdl

        if world != 1:
            print("error: --direct runs one process in this one; drop --nproc or --direct", file=sys.stderr)
            return 2
        from cosmos_nemo.checkpoint.lock import RunFolderBusy

        try:
            summary = fdl.build(recipe)()
        except RunFolderBusy as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"run folder: {summary['run_dir']}  step {summary['step']}  train loss {summary['train_loss']}")
        return 0
    print(f"run folder: {L.run_dir_of(recipe)}", flush=True)
    try:
        result = L.launch(recipe, executor, name=args.name, tail_logs=not args.quiet, base_dir=base_dir)
    except L.LaunchError as err:  # the run folder is in use by a live job
        print(f"error: {err}", file=sys.stderr)
        return 2
    if result.stopped_by:  # Ctrl-C / SIGTERM: torchrun and its workers are stopped
        print(f"\n{result.text}", file=sys.stderr, flush=True)
        return 128 + result.stopped_by
    if not result.ok:
        print(f"error: training {result.text.lower() or 'failed'}; logs:", file=sys.stderr)
        for path in result.logs:
            print(f"  {path}", file=sys.stderr)
        tail = _tail(result.logs)
        if tail:
            print("last lines:\n" + tail, file=sys.stderr)
        return 1
    if args.executor == "slurm":
        print(f"{result.text}\nsbatch script: {result.logs[0] if result.logs else base_dir}\n"
              f"follow it with: cosmos-nemo experiment status {base_dir}  (or: logs, cancel)")
    else:
        print(f"\ndone: run folder {result.run_dir}")
    return 0


def _from_sft_toml(args: argparse.Namespace):
    """The recipe a `--sft-toml` file names, with its fields and the trailing overrides set."""
    from cosmos_nemo.recipes.sft_toml import load_sft_toml

    if args.toml:
        raise ValueError("give --sft-toml (NVIDIA's structured SFT TOML) or --toml (recipe overrides), not both")
    if args.recipe_arg:
        raise ValueError("--recipe-arg does not combine with --sft-toml: [job] experiment names a recipe without "
                         "arguments")
    overrides = list(args.overrides)
    if args.recipe:  # with --sft-toml every positional is an override
        if "=" not in args.recipe:
            raise ValueError(f"--sft-toml names the recipe in [job] experiment; {args.recipe!r} is not a KEY=VALUE "
                             "override")
        overrides.insert(0, args.recipe)
    world = args.nodes * args.gpus_per_node if args.executor == "slurm" else args.nproc
    recipe, _, notes = load_sft_toml(args.sft_toml, overrides, world_size=world)
    for note in notes:
        print(f"note: {note}")
    return recipe, overrides


_RANK_ERROR = re.compile(r"\[rank(\d+)\]:\s*([\w.]*(?:Error|Exception|Interrupt)\b.*)$")


def _tail(paths: list[str], lines: int = 15) -> str:
    """The workers' own exceptions (torchrun's summary hides them) and the last lines of the log."""
    for path in paths:
        if not path.endswith(("combined.log", "stderr.log")):
            continue
        text = Path(path).read_text(errors="replace").splitlines()
        if not text:
            continue
        errors = {}
        for line in text:
            match = _RANK_ERROR.search(line)
            if match:
                errors[match.group(1)] = match.group(2)  # the last exception line of each rank
        summary = [f"rank {rank}: {message}" for rank, message in sorted(errors.items(), key=lambda kv: int(kv[0]))]
        return "\n".join(summary + ["...", *text[-lines:]])
    return ""


class _Intermixed:
    """Lets overrides and options mix in any order (`RECIPE a=1 --nproc 2 b=2`), as users type them;
    plain argparse stops taking positionals once an option has followed them."""

    _inside = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inside:  # parse_known_intermixed_args calls back into this method
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a recipe (local torchrun or Slurm), with dotted overrides",
        description="Build a named recipe (see --list), apply dotted overrides (trainer.max_steps=100), check "
        "parallel sizes, batch sizes and data against the model, then launch it through nemo-run: locally with "
        "torchrun (CPU or GPU) or on Slurm. The run folder is <checkpoint.output_root>/<project>/<group>/<name>/.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recipe", nargs="?", help="recipe name, e.g. cosmos_ar_tiny_finetune (see --list); none with --sft-toml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides of the recipe's configs: model.*, data.*, optim.*, trainer.*, checkpoint.*, "
                   "parallel.*, log.* (values are YAML: true, null, [a,b]); an unknown key names the closest valid one")
    p.add_argument("--list", action="store_true", help="list the recipes and exit")
    p.add_argument("--toml", metavar="FILE",
                   help="overrides as a TOML file of sections ([trainer] max_steps = 100, [model.yarn] ...); unknown keys "
                   "and wrong types are errors; ${oc.env:VAR} or ${oc.env:VAR,default} read the environment. Dotted "
                   "overrides on the command line are applied after it")
    p.add_argument("--sft-toml", "--sft_toml", metavar="FILE",
                   help="NVIDIA's structured SFT TOML (Cosmos3 `cosmos_framework.scripts.train --sft-toml`): [job] "
                   "task/experiment pick the recipe (no RECIPE argument), [model], [optimizer], [scheduler], [trainer], "
                   "[checkpoint], [dataloader_train] keep the reference's meanings; validated before anything is "
                   "built (file, line, key, closest valid key). Trailing KEY=VALUE: a TOML key (trainer.max_iter=4) "
                   "or a recipe field (data.paths=[...]). See examples/toml/ and README")
    p.add_argument("--recipe-arg", "--recipe_arg", action="append", default=[], metavar="NAME=VALUE",
                   help="an argument of the recipe function itself (repeatable): only the tokenizer-swap recipes take "
                   "any (tokenizer, frames, height, width, tokenizer_vocab_size, resize_vocab), because they derive the "
                   "latent grid and vocabulary, which overrides alone would not; everything else is an override")
    p.add_argument("--executor", choices=("local", "slurm"), default="local",
                   help="local: torchrun on this machine (default); slurm: sbatch through nemo-run's SlurmExecutor")
    p.add_argument("--nproc", type=int, default=1,
                   help="local: processes (torchrun ranks) on this machine (default 1); world size = nproc")
    p.add_argument("--direct", action="store_true",
                   help="local, 1 process: run in this process without torchrun (debugging)")
    p.add_argument("--nodes", type=int, default=1, help="slurm: nodes (default 1)")
    p.add_argument("--gpus-per-node", "--gpus_per_node", type=int, default=8,
                   help="slurm: GPUs (= torchrun ranks) per node (default 8); world size = nodes x gpus-per-node")
    p.add_argument("--account", help="slurm: account (sbatch --account)")
    p.add_argument("--partition", help="slurm: partition (sbatch --partition)")
    p.add_argument("--time", default="04:00:00", help="slurm: wall-clock limit (default 04:00:00)")
    p.add_argument("--container-image", "--container_image",
                   help="slurm: container image for pyxis (srun --container-image), with cosmos_nemo installed")
    p.add_argument("--mounts", help="slurm: container mounts SRC:DST[:ro],... (srun --container-mounts)")
    p.add_argument("--job-dir", "--job_dir",
                   help="slurm: folder on a shared file system for the sbatch script, logs and serialised recipe "
                   "(default <run folder>/launches)")
    p.add_argument("--ssh-host", "--ssh_host", help="slurm: submit through ssh to this login node (default: sbatch here)")
    p.add_argument("--ssh-user", "--ssh_user", help="slurm: ssh user (default $USER)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="an environment variable for every rank (repeatable), e.g. NCCL_SOCKET_IFNAME=ib0 or "
                   "NCCL_DEBUG=INFO; on Slurm it adds to or overrides the NCCL defaults listed below")
    p.add_argument("--name", help="experiment name (default checkpoint.name)")
    p.add_argument("--dryrun", action="store_true",
                   help="print the resolved recipe and the torchrun command or sbatch script; start nothing")
    p.add_argument("--quiet", action="store_true", help="local: do not stream rank 0's output")
    p.set_defaults(func=_train)
    p.__class__ = type("TrainArgumentParser", (_Intermixed, type(p)), {})
    _register_experiment(sub)
    from cosmos_nemo.recipes import plan  # `cosmos-nemo plan`: per-GPU memory and the smallest layout that fits

    plan.register(sub)


# --------------------------------------------------------------------------------------------------
# cosmos-nemo experiment status|logs|cancel


def _experiment(args: argparse.Namespace) -> int:
    from cosmos_nemo.recipes import launch as L

    try:
        exp = L.load_experiment(args.folder, args.id)
    except (L.LaunchError, AssertionError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    names = [job.id for job in exp.jobs]
    if args.job and args.job not in names:
        print(f"error: experiment {exp._id} has no job {args.job!r}; its jobs: {', '.join(names)}", file=sys.stderr)
        return 2
    chosen = [args.job] if args.job else names
    if args.action == "status":
        info = exp.status(return_dict=True) or {}
        print(f"experiment {exp._id}")
        for name in chosen:
            job = info.get(name, {})
            print(f"  job {name}: {job.get('status', 'UNKNOWN')}"
                  + (f"  ({'Slurm job' if 'Slurm' in str(job.get('executor', '')) else 'app'} {job['job_id']})"
                     if job.get("job_id") else "")
                  + (f"\n    folder: {job['local_dir']}" if job.get("local_dir") else ""))
        return 0
    if args.action == "logs":
        for name in chosen:
            exp.logs(job_id=name, regex=args.regex)
        return 0
    # cancel
    for name in chosen:
        exp.cancel(name)
    info = exp.status(return_dict=True) or {}
    for name in chosen:
        print(f"job {name}: cancel requested; now {info.get(name, {}).get('status', 'UNKNOWN')}")
    return 0


def _register_experiment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "experiment",
        help="status, logs or cancel of a launched training (nemo-run experiments)",
        description="Look after a `cosmos-nemo train` launch through nemo-run's experiment API: its state (Slurm: "
        "through sacct), its logs, or cancel it (Slurm: scancel). FOLDER is where the launch recorded its experiment: "
        "the Slurm --job-dir, or the run folder (its launches/ folder) for a local launch.",
        epilog="examples:\n"
        "  cosmos-nemo experiment status /lustre/jobs\n"
        "  cosmos-nemo experiment logs /lustre/jobs --regex 'step|loss'\n"
        "  cosmos-nemo experiment cancel /lustre/jobs\n"
        "  cosmos-nemo experiment status runs/cosmos_nemo/autoregressive/cosmos_ar_tiny_finetune\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=("status", "logs", "cancel"),
                   help="status: each job's state and Slurm job id; logs: print the job's log (a running job's log is followed until it ends; Ctrl-C stops following); cancel: stop the job")
    p.add_argument("folder", help="the Slurm --job-dir, a run folder, its launches/ folder, or one experiment's folder")
    p.add_argument("--id", help="the experiment id (the folder name under experiments/<title>/); default the latest")
    p.add_argument("--job", help="one job of the experiment by name (default every job; a train launch has one)")
    p.add_argument("--regex", help="logs: print only the lines matching this regular expression")
    p.set_defaults(func=_experiment)
