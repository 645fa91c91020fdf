"""`cosmos-nemo convert to-dcp` and `convert export-hf`: the checkpoint steps of NVIDIA's Cosmos3 SFT workflow
(seed 000), named as it names them, over this library's converters.

    cosmos-nemo convert to-dcp --checkpoint-path <name | hub id | path> -o DIR [--model NAME]
        (the reference `python -m cosmos_framework.scripts.convert_model_to_dcp -o DIR --checkpoint-path NAME`)
        a released checkpoint -> a megatron dist-ckpt (DCP) folder that `checkpoint.pretrained` (the SFT TOML's
        `[checkpoint] load_path`) accepts, plus DIR/config.yaml (its model config, as a run folder records it). A
        Qwen3-VL snapshot (the Reasoner) also keeps its config and processor files in DIR/hf_config.

    cosmos-nemo convert export-hf --checkpoint-path RUN/checkpoints/iter_N --config-file RUN/config.yaml \
        -o RUN/model [--verify]
        (the reference `python -m cosmos_framework.scripts.export_model`) a training checkpoint -> Hugging Face
        safetensors: a DiT as a diffusers `CosmosTransformer3DModel` folder (config.json +
        diffusion_pytorch_model.safetensors), an AR model as `model.safetensors` in the released Cosmos AR key
        layout + `config.json`, a Reasoner as a `transformers` Qwen3-VL folder (weights, config, processor). The
        run's config.yaml alone rebuilds the model. `--verify` loads the export into a fresh model and requires its
        weights (exported again) and its outputs on fixed inputs to be bit-identical.

Both run in one process; the dist-ckpt loads at any TP/PP it was saved at. A LoRA checkpoint exports its
recorded base with the adapters merged; `--ema` exports the checkpoint's EMA weights (`ema/`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

# registered names (the reference's checkpoint catalog) -> (named model config, Hugging Face repository)
CATALOG = {
    "Cosmos-1.0-Autoregressive-4B": ("4b", "nvidia/Cosmos-1.0-Autoregressive-4B"),
    "Cosmos-1.0-Autoregressive-12B": ("12b", "nvidia/Cosmos-1.0-Autoregressive-12B"),
    "Cosmos-1.0-Autoregressive-5B-Video2World": ("5b_v2w", "nvidia/Cosmos-1.0-Autoregressive-5B-Video2World"),
    "Cosmos-1.0-Autoregressive-13B-Video2World": ("13b_v2w", "nvidia/Cosmos-1.0-Autoregressive-13B-Video2World"),
    "Cosmos-Predict1-7B-Video2World": ("predict1_7b_v2w", "nvidia/Cosmos-Predict1-7B-Video2World"),
    "Cosmos-Predict1-14B-Video2World": ("predict1_14b_v2w", "nvidia/Cosmos-Predict1-14B-Video2World"),
    "Cosmos-Predict1-7B-Text2World": ("predict1_7b_t2w", "nvidia/Cosmos-Predict1-7B-Text2World"),
    "Cosmos-Predict1-14B-Text2World": ("predict1_14b_t2w", "nvidia/Cosmos-Predict1-14B-Text2World"),
    "Qwen3-VL-8B-Instruct": ("qwen3_vl", "Qwen/Qwen3-VL-8B-Instruct"),  # the Reasoner's backbone
}
# what a Reasoner snapshot needs besides its weights to rebuild the model and its processor (copied by to-dcp)
_VLM_FILE_PATTERNS = ("*.json", "*.txt", "*.jinja", "*.model")
_BY_HUB = {hub.lower(): name for name, (_, hub) in CATALOG.items()}


class ExportError(ValueError):
    """A conversion that cannot be done as asked; the message says why."""


def model_config_for(model: str | None, overrides=(), source=None):
    """(family, config) of a named AR or DiT model (`--model`), or of a diffusers folder's config.json."""
    from cosmos_nemo.checkpoint.commands import parse_set_flags
    from cosmos_nemo.models.ar.config import NAMED_CONFIGS as AR_CONFIGS
    from cosmos_nemo.models.family import family_of, get_family

    exported = _exported_ar_config(source) if model is None and source is not None else None
    if exported is not None:  # an AR folder written by `convert export-hf`: its config.json is the model's
        family = get_family("ar")
        try:
            cfg = family.config_from_dict(exported)
            if overrides:
                cfg = dataclasses.replace(cfg, **parse_set_flags(overrides))
        except (TypeError, ValueError) as err:
            raise ExportError(f"the config.json beside {source} does not describe an AR model: {err}") from None
        return family_of(cfg), cfg
    if model and model.lower() in AR_CONFIGS:
        try:
            cfg = get_family("ar").named_config(model.lower(), **parse_set_flags(overrides))
        except TypeError as err:
            raise ExportError(f"unknown AR config field in --set: {err}") from None
        return family_of(cfg), cfg
    from cosmos_nemo.checkpoint.dit_commands import _config

    try:
        cfg = _config(model, list(overrides), source)
    except KeyError as err:
        from cosmos_nemo.models.dit.config import NAMED_CONFIGS as DIT_CONFIGS

        raise ExportError(f"{err.args[0] if err.args else err}; AR models: {sorted(AR_CONFIGS)}; DiT models: "
                          f"{sorted(DIT_CONFIGS)}") from None
    return family_of(cfg), cfg


def _exported_ar_config(source) -> dict | None:
    """The model fields of the `config.json` that `export-hf` writes beside an AR `model.safetensors`, or None."""
    source = Path(source)
    config = (source if source.is_dir() else source.parent) / "config.json"
    if not config.is_file():
        return None
    try:
        info = json.loads(config.read_text())
    except ValueError:
        return None
    if not isinstance(info, dict) or info.get("cosmos_nemo_family") != "ar":
        return None
    return {k: v for k, v in info.items() if k != "cosmos_nemo_family"}


def _download(repo: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo, allow_patterns=["model.pt", "*.safetensors", *_VLM_FILE_PATTERNS]))
    except Exception as err:  # offline, gated, unknown repository
        raise ExportError(f"cannot download {repo!r} from the Hugging Face hub ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:200] if str(err) else ''}), and no file or folder of that name "
                          f"exists relative to {Path.cwd()}. If it is a path, check it; if it is a hub id, download "
                          f"it where there is network "
                          f"(`huggingface-cli download {repo} --local-dir DIR`) and pass --checkpoint-path DIR") from None


def _released_file(folder: Path) -> Path:
    """The weights inside a downloaded or local folder: a diffusers folder as is, else its model.pt / safetensors."""
    if (folder / "config.json").is_file() and (folder / "diffusion_pytorch_model.safetensors").is_file() \
            or (folder / "transformer" / "config.json").is_file():
        return folder
    for pattern in ("model.pt", "*.safetensors"):
        found = sorted(folder.glob(pattern))
        if len(found) == 1:
            return found[0]
    raise ExportError(f"{folder} holds no model.pt, single .safetensors file or diffusers transformer folder")


def _vlm_config(model: str | None, path: Path, overrides=()):
    """The Reasoner config of a Qwen3-VL snapshot folder (config.json of model_type qwen3_vl, or `export-hf`'s
    folder with its cosmos_nemo.json), or of `--model qwen3_vl`; None for any other source."""
    from cosmos_nemo.checkpoint.commands import parse_set_flags
    from cosmos_nemo.models.vlm.config import VLMModelConfig

    fields: dict | None = None
    folder = path if path.is_dir() else path.parent
    ours, theirs = folder / "cosmos_nemo.json", folder / "config.json"
    try:
        info = json.loads(ours.read_text()) if ours.is_file() else {}
        if info.get("family") == "vlm":
            fields = dict(info["model"])
            if fields.get("name") != "tiny":
                fields["model_name"] = str(folder.resolve())
        elif theirs.is_file() and json.loads(theirs.read_text()).get("model_type") == "qwen3_vl":
            fields = {"name": "qwen3_vl", "model_name": str(folder.resolve())}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ExportError(f"{folder}: unreadable model description ({err})") from None
    if fields is None and model == "qwen3_vl" and path.is_dir() and not any("model_name=" in o for o in overrides):
        raise ExportError(f"{path} is not a Qwen3-VL snapshot (no config.json of model_type qwen3_vl): give the "
                          "snapshot folder (`hf download Qwen/Qwen3-VL-8B-Instruct --local-dir DIR`), or name its "
                          "architecture with --set model_name=SNAPSHOT_OR_HUB_ID")
    if fields is None and model in ("qwen3_vl", "tiny_vlm"):
        fields = {"name": "qwen3_vl" if model == "qwen3_vl" else "tiny"}
    if fields is None:
        return None
    if model not in (None, "qwen3_vl", "tiny_vlm"):
        raise ExportError(f"{path} is a Qwen3-VL (Reasoner) checkpoint; --model {model} names another model (drop it)")
    try:
        cfg = VLMModelConfig(**{**fields, **parse_set_flags(overrides)})
        cfg.check()
    except (TypeError, ValueError) as err:
        raise ExportError(f"bad Reasoner model config ({err}); fields: {sorted(VLMModelConfig.__dataclass_fields__)}") \
            from None
    return cfg


def _copy_model_files(cfg, out: Path) -> None:
    """A Qwen3-VL dist-ckpt keeps its snapshot's config and processor files in out/hf_config (model_name points
    there), so the folder alone rebuilds the model for training and export."""
    import shutil

    if cfg.name == "tiny":
        return
    source = Path(cfg.model_name)
    if not source.is_dir():
        return  # a hub id: transformers reads (and caches) its config and processor itself
    target = out / "hf_config"
    target.mkdir()
    for pattern in _VLM_FILE_PATTERNS:
        for f in source.glob(pattern):
            if f.name != "model.safetensors.index.json" and f.is_file():
                shutil.copy2(f, target / f.name)
    cfg.model_name = str(target.resolve())


def to_dcp(checkpoint_path: str, output, model: str | None = None, overrides=(), ema: bool = False,
           overwrite: bool = False) -> tuple[Path, str]:
    """The work of `convert to-dcp`; returns (the dist-ckpt folder, the model's name)."""
    import shutil

    import yaml

    from cosmos_nemo.checkpoint.convert import import_released
    from cosmos_nemo.checkpoint.run import plain_data
    from cosmos_nemo.io.atomic import atomic_write_text
    from cosmos_nemo.models.family import family_of

    out = Path(output)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    path = Path(checkpoint_path)
    name = _BY_HUB.get(checkpoint_path.lower(), checkpoint_path)
    if not path.exists():
        if name in CATALOG:
            model = model or CATALOG[name][0]
            path = _download(CATALOG[name][1])
        elif "/" in checkpoint_path and not checkpoint_path.startswith((".", "/")):
            path = _download(checkpoint_path)
        else:
            raise ExportError(f"{checkpoint_path!r} is neither a path nor a registered name ({', '.join(CATALOG)}) nor a "
                              "hub id (owner/repository)")
    cfg = _vlm_config(model, path, overrides)
    if cfg is not None:  # a Reasoner: the snapshot folder (sharded safetensors) is the source
        family, source = family_of(cfg), path
    else:
        source = _released_file(path) if path.is_dir() else path
        family, cfg = model_config_for(model, overrides, source)
    options = {"ema": True} if ema else {}
    if ema and family.name != "dit":
        raise ExportError(f"--ema reads the net_ema.* weights of a released DiT file; {family.name} releases have none")
    import_released(cfg, str(source), out, overwrite=overwrite, **options)
    try:
        if family.name == "vlm":
            _copy_model_files(cfg, out)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(plain_data({"model": dataclasses.asdict(cfg)}),
                                                              sort_keys=False))
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # no half-written output
        raise
    return out, getattr(cfg, "name", family.name)


def read_config_file(config_file):
    """(family, model config) from a run's config.yaml (or to-dcp's): its `model:` section alone."""
    import yaml

    from cosmos_nemo.models.family import get_family

    path = Path(config_file)
    if not path.is_file():
        raise FileNotFoundError(f"--config-file {path} not found (a run folder's config.yaml)")
    fields = (yaml.safe_load(path.read_text()) or {}).get("model")
    if not isinstance(fields, dict):
        raise ExportError(f"{path} has no `model:` section: pass the config.yaml `cosmos-nemo train` wrote")
    family = get_family(fields.get("family") or "ar")
    return family, family.config_from_dict(dict(fields))


def _hf_state(family, cfg, model) -> dict:
    if family.name == "dit":
        from cosmos_nemo.models.dit import convert

        return convert.export_released(model, cfg, "diffusers")
    return family.export_released(model, cfg)


def probe_outputs(family, cfg, model):
    """The model's output on fixed small inputs (the export's --verify compares them): a DiT denoises a 2x4x4-token
    latent with 5 text tokens, an AR model predicts a 1x2x2 token grid."""
    import torch

    if hasattr(family, "probe_outputs"):
        return family.probe_outputs(model, cfg)
    g = torch.Generator().manual_seed(0)
    model = model.eval()
    with torch.no_grad():
        if family.name == "dit":
            x = torch.randn(1, cfg.latent_channels, 2, 4, 4, generator=g)
            text = torch.randn(1, 5, cfg.crossattn_proj_in or cfg.context_dim, generator=g)
            cond = torch.zeros(1, 1, 2, 4, 4) if cfg.video2world else None
            out = model(x, torch.full((1,), 0.5), text, condition_mask=cond)
        else:
            vocab = cfg.output_vocab_size or cfg.vocab_size
            tokens = torch.randint(0, vocab, (1, 4), generator=g)
            context = torch.randn(1, 4, cfg.context_dim, generator=g) if cfg.video2world else None
            out = model(tokens, grid=(1, 2, 2), **({"context": context} if context is not None else {}))
    return out[0] if isinstance(out, (tuple, list)) else out


def _model_folder(checkpoint_path, ema: bool) -> Path:
    from cosmos_nemo.checkpoint.run import resolve_model_folder

    folder = resolve_model_folder(checkpoint_path) if Path(checkpoint_path).is_dir() else None
    if folder is None or not (Path(folder) / "metadata.json").is_file():
        raise ExportError(f"{checkpoint_path} is not a cosmos-nemo checkpoint: give an iter_* folder, its model/ folder, "
                          "a run folder, or a `convert to-dcp` output")
    folder = Path(folder)
    if ema:
        ema_dir = folder.parent / "ema"
        if not (ema_dir / "metadata.json").is_file():
            raise ExportError(f"{folder.parent} has no ema/ checkpoint (the run kept no EMA): drop --ema")
        folder = ema_dir
    return folder


def export_hf(checkpoint_path, config_file, output, verify: bool = False, ema: bool = False,
              overwrite: bool = False, log=print) -> Path:
    """The work of `convert export-hf`; returns the written folder."""
    import torch

    from cosmos_nemo.checkpoint import dist as dist_ckpt
    from cosmos_nemo.checkpoint.convert import _single_process, _teardown
    from cosmos_nemo.io.atomic import atomic_dir

    out = Path(output)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    family, cfg = read_config_file(config_file)
    folder = _model_folder(checkpoint_path, ema)
    own = _single_process()
    try:
        model = family.build_model(cfg, True, True, torch.float32)
        try:
            dist_ckpt.load_model([model], folder)
        except Exception as err:  # megatron's CheckpointingException and friends: the config does not fit
            raise ExportError(f"{folder} does not hold the weights of the model {config_file} describes "
                              f"({getattr(cfg, 'name', family.name)}): {str(err)[:500]}") from None
        state = {k: v.detach().cpu().contiguous() for k, v in _hf_state(family, cfg, model).items()}
        if family.name == "dit":
            from cosmos_nemo.models.dit import convert

            convert.save_diffusers(state, cfg, out, overwrite=overwrite)
        elif hasattr(family, "write_export"):  # a family with its own folder layout (the Reasoner: transformers')
            with atomic_dir(out, overwrite=overwrite) as tmp:
                family.write_export(state, model, cfg, Path(tmp))
        else:
            from safetensors.torch import save_file

            from cosmos_nemo.checkpoint.run import plain_data

            with atomic_dir(out, overwrite=overwrite) as tmp:
                save_file(state, str(Path(tmp) / "model.safetensors"), metadata={"format": "pt"})
                info = {"cosmos_nemo_family": family.name, **plain_data(dataclasses.asdict(cfg))}
                (Path(tmp) / "config.json").write_text(json.dumps(info, indent=2) + "\n")
        if verify:
            fresh = family.build_model(cfg, True, True, torch.float32)
            source = out if family.name == "dit" or hasattr(family, "write_export") else out / "model.safetensors"
            family.load_released(fresh, cfg, str(source))
            again = _hf_state(family, cfg, fresh)
            differ = [k for k in state if k not in again or not torch.equal(state[k], again[k].detach().cpu())]
            extra = sorted(set(again) - set(state))
            if differ or extra:
                raise ExportError(f"--verify: the export at {out} does not reload to the same weights: differing "
                                  f"{differ[:5]}, unexpected {extra[:5]}")
            expected, got = probe_outputs(family, cfg, model), probe_outputs(family, cfg, fresh)
            if not torch.equal(expected, got):
                raise ExportError(f"--verify: the model reloaded from {out} gives other outputs (max abs difference "
                                  f"{float((expected - got).abs().max()):.3g})")
            log(f"verified: {out} reloads to the same {len(state)} tensors and the same outputs, bit for bit")
    finally:
        _teardown(own)
    return out


def register(sub) -> None:
    common = dict(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p = sub.add_parser(
        "to-dcp",
        help="released checkpoint (registered name, hub id or path) -> dist-ckpt folder for checkpoint.pretrained "
             "(the reference convert_model_to_dcp)",
        description="The reference `cosmos_framework.scripts.convert_model_to_dcp`: read a released checkpoint and "
        "write a megatron dist-ckpt (DCP) folder that training starts from (`checkpoint.pretrained=DIR`, the SFT TOML's "
        "[checkpoint] load_path) at any parallel size, with DIR/config.yaml recording the model. --checkpoint-path "
        f"is a registered name ({', '.join(CATALOG)}), a hub id (owner/repository, downloaded) or a local file or "
        "folder: a Cosmos AR/DiT model.pt or .safetensors, a Predict2.5 DCP folder, a diffusers folder, or a Qwen3-VL "
        "snapshot (the Reasoner's backbone: its config and processor files are kept in DIR/hf_config). Strict: every "
        "key used, every parameter filled.",
        **common,
    )
    p.add_argument("--checkpoint-path", "--checkpoint_path", dest="checkpoint_path", required=True,
                   help="registered name, hub id, or local checkpoint file/folder")
    p.add_argument("-o", "--output", required=True, help="dist-ckpt folder to write")
    p.add_argument("--model", default=None,
                   help="named AR (4b, 12b, 5b_v2w, 13b_v2w, tiny, ...) or DiT (predict25_2b, tiny_predict25, ...) "
                        "config, or qwen3_vl / tiny_vlm (Reasoner); implied by a registered name or a diffusers or Qwen3-VL "
                        "folder's config.json")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a model config field (repeatable)")
    p.add_argument("--ema", action="store_true", help="DiT: import the file's EMA weights (net_ema.*)")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.set_defaults(func=_run_to_dcp)

    e = sub.add_parser(
        "export-hf",
        help="training checkpoint -> Hugging Face safetensors (diffusers folder for a DiT) (the reference export_model)",
        description="The reference `cosmos_framework.scripts.export_model`: export a training checkpoint "
        "(RUN/checkpoints/iter_N, its model/ folder, a run folder, or a to-dcp output) to Hugging Face safetensors in "
        "--output: a DiT as a diffusers CosmosTransformer3DModel folder (config.json + "
        "diffusion_pytorch_model.safetensors: CosmosTransformer3DModel.from_pretrained, or generate diffusion "
        "--checkpoint-path OUT), an AR model as model.safetensors (released Cosmos AR keys, what ar-import and "
        "checkpoint.pretrained read) + config.json, a Reasoner (vlm) as a transformers Qwen3-VL folder "
        "(Qwen3VLForConditionalGeneration / AutoProcessor.from_pretrained). The model is rebuilt from --config-file "
        "alone. A LoRA checkpoint gives its base with the adapters merged.",
        **common,
    )
    e.add_argument("--checkpoint-path", "--checkpoint_path", dest="checkpoint_path", required=True,
                   help="RUN/checkpoints/iter_N (or its model/ folder, a run folder, a to-dcp output)")
    e.add_argument("--config-file", "--config_file", dest="config_file", required=True,
                   help="the run's config.yaml (its model: section rebuilds the model)")
    e.add_argument("-o", "--output", required=True, help="folder to write, e.g. RUN/model")
    e.add_argument("--verify", action="store_true",
                   help="reload the export into a fresh model; require bit-identical weights and outputs on fixed inputs")
    e.add_argument("--ema", action="store_true", help="export the checkpoint's EMA weights (iter_N/ema)")
    e.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    e.set_defaults(func=_run_export_hf)


def _run_to_dcp(args) -> int:
    try:
        out, name = to_dcp(args.checkpoint_path, args.output, model=args.model, overrides=args.overrides, ema=args.ema,
                           overwrite=args.overwrite)
    except (ValueError, KeyError, OSError) as err:  # incl. ExportError, CheckpointMismatchError
        print(f"error: {err.args[0] if isinstance(err, KeyError) and err.args else err}")
        return 2
    print(f"wrote dist-ckpt folder {out} ({name}); train from it with checkpoint.pretrained={out} "
          f"([checkpoint] load_path = \"{out}\")")
    return 0


def _run_export_hf(args) -> int:
    try:
        out = export_hf(args.checkpoint_path, args.config_file, args.output, verify=args.verify, ema=args.ema,
                        overwrite=args.overwrite)
    except (ValueError, KeyError, OSError) as err:
        print(f"error: {err.args[0] if isinstance(err, KeyError) and err.args else err}")
        return 2
    print(f"wrote {out}")
    return 0
