"""Strict loading of tokenizer weights: NVIDIA's TorchScript `encoder.jit`/`decoder.jit`, safetensors, the hub.

Every key of a checkpoint is accounted for:

- a parameter of ours with the same name and shape is loaded (cast to the model's dtype);
- a constant buffer (Haar `wavelets`/`_arange`/`patch_size_buffer`, FSQ `_levels`/`_basis`/
  `implicit_codebook`) is checked against the value we compute; it may be absent (cosmos-predict1's
  state-dict tokenizers and diffusers drop them). `wavelets` is taken from the file, because the released
  bf16 files carry bf16-rounded filters and the reference computes with exactly those;
- a key of a hybrid resampling conv our definition builds as `nn.Identity` (see `UNUSED_RESAMPLE_KEY`) is
  ignored and reported: the 0.1 CV TorchScript files are 3.4 M parameters larger than the Identity
  definition, which matches `down.1.downsample.conv{1,2,3}` being present but unused;
- anything else, and any parameter of ours the file lacks, is an error that lists the keys.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .configs import REGISTRY, TokenizerConfig, resolve_name

# The hub files; `tokenizer_config.json` is what `CausalVideoTokenizer.save` writes beside safetensors.
JIT_FILES = ("encoder.jit", "decoder.jit")
SAFETENSORS_FILES = ("encoder.safetensors", "decoder.safetensors")
CONFIG_FILE = "tokenizer_config.json"

# Keys of resampling convs that a checkpoint may carry although the reference network never calls them.
UNUSED_RESAMPLE_KEY = re.compile(
    r"^(?:encoder\.down|decoder\.up)\.\d+\.(?:downsample|upsample)\.conv[123]\.conv3d\.(?:weight|bias)$"
)

# Buffers whose values are fixed by the architecture (suffix of the key → how to compare).
_CONSTANT_BUFFER_SUFFIXES = ("wavelets", "_arange", "patch_size_buffer", "_levels", "_basis", "implicit_codebook")


class TokenizerLoadError(RuntimeError):
    """Weights do not fit the tokenizer definition; the message names the offending keys."""


class TokenizerNotAvailableError(FileNotFoundError):
    """Released weights are neither in a local folder nor downloadable (offline); the message says what to pass."""


@dataclass
class LoadReport:
    source: str
    loaded: list[str] = field(default_factory=list)
    constants_checked: list[str] = field(default_factory=list)
    constants_absent: list[str] = field(default_factory=list)
    ignored_unused: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{len(self.loaded)} tensors loaded from {self.source}"]
        if self.constants_checked:
            parts.append(f"{len(self.constants_checked)} constant buffers verified")
        if self.constants_absent:
            parts.append(f"{len(self.constants_absent)} constant buffers absent (computed)")
        if self.ignored_unused:
            parts.append(f"{len(self.ignored_unused)} unused resampling-conv keys ignored: {self.ignored_unused}")
        return "; ".join(parts)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a `.jit` TorchScript archive (its `state_dict()`) or a `.safetensors` file, on CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from cosmos_nemo.io.tensors import read_safetensors

        return read_safetensors(path)  # a truncated or foreign file is a TensorFileError naming it
    if path.suffix in (".jit", ".pt", ".ts"):
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except RuntimeError as e:
            raise TokenizerLoadError(
                f"{path}: not a TorchScript archive ({str(e).splitlines()[0]}); tokenizer .jit files come from "
                "NVIDIA's hub repos (encoder.jit / decoder.jit)"
            ) from e
        return {k: v.detach().clone() for k, v in module.state_dict().items()}
    raise TokenizerLoadError(f"{path}: unsupported weight file type {path.suffix!r}; use .jit or .safetensors")


def _is_identity(module: nn.Module, dotted: str) -> bool:
    try:
        return isinstance(module.get_submodule(dotted), nn.Identity)
    except AttributeError:
        return False


def _check_constant(key: str, ours: torch.Tensor, theirs: torch.Tensor) -> str | None:
    if tuple(ours.shape) != tuple(theirs.shape):
        return f"{key}: shape {tuple(theirs.shape)} in the file, {tuple(ours.shape)} expected"
    if key.endswith("wavelets"):
        # bf16 files round 1/√2 to 0.70703125; anything further away is not a Haar filter.
        ok = torch.allclose(theirs.float(), ours.float(), atol=1e-2)
    elif key.endswith("implicit_codebook"):
        ok = torch.equal(theirs.float(), ours.float())
    else:
        ok = torch.equal(theirs.to(torch.int64), ours.to(torch.int64))
    return None if ok else f"{key}: value {theirs.flatten()[:8].tolist()} differs from the architecture's constant"


def load_strict(module: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> LoadReport:
    """Load `state_dict` into `module`, accounting for every key (see the module docstring)."""
    report = LoadReport(source=source)
    ours = module.state_dict()
    errors: list[str] = []
    unexpected = []
    to_load: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key not in ours:
            owner = key.rsplit(".", 2)[0]  # `…conv1` of `…conv1.conv3d.weight`
            if UNUSED_RESAMPLE_KEY.match(key) and _is_identity(module, owner):
                report.ignored_unused.append(key)
            else:
                unexpected.append(key)
            continue
        target = ours[key]
        if key.rsplit(".", 1)[-1] in _CONSTANT_BUFFER_SUFFIXES:
            problem = _check_constant(key, target, value)
            if problem:
                errors.append(problem)
                continue
            report.constants_checked.append(key)
            if key.endswith("wavelets"):
                to_load[key] = value
            continue
        if tuple(target.shape) != tuple(value.shape):
            errors.append(f"{key}: shape {tuple(value.shape)} in the file, {tuple(target.shape)} in the model")
            continue
        to_load[key] = value
        report.loaded.append(key)
    missing = [k for k in ours if k not in state_dict and k.rsplit(".", 1)[-1] not in _CONSTANT_BUFFER_SUFFIXES]
    report.constants_absent = [k for k in ours if k not in state_dict and k not in missing]
    if unexpected:
        errors.append(f"unexpected keys ({len(unexpected)}): {sorted(unexpected)}")
    if missing:
        errors.append(f"missing keys ({len(missing)}): {sorted(missing)}")
    if errors:
        raise TokenizerLoadError(f"weights from {source} do not fit this tokenizer:\n  " + "\n  ".join(errors))
    with torch.no_grad():
        for key, value in to_load.items():
            ours[key].copy_(value.to(device=ours[key].device, dtype=ours[key].dtype))
    return report


# --------------------------------------------------------------------------------------------------------
# Folders, configs and the hub
# --------------------------------------------------------------------------------------------------------


def weight_files(folder: Path) -> tuple[Path, Path] | None:
    """The (encoder, decoder) files of a tokenizer folder: our safetensors first, else the TorchScript files."""
    for names in (SAFETENSORS_FILES, JIT_FILES):
        enc, dec = folder / names[0], folder / names[1]
        if enc.is_file() and dec.is_file():
            return enc, dec
    return None


def _infer_from_keys(enc_sd: dict[str, torch.Tensor], dec_sd: dict[str, torch.Tensor]) -> TokenizerConfig:
    """Rebuild a config from tensor shapes (channels, levels, patch size, z channels, resampling).

    Resampling factors are read from which hybrid convs exist; files that carry unused convs (0.1 CV) are
    ambiguous, which is why named folders and config files take precedence over this.
    """
    conv_in = enc_sd["encoder.conv_in.0.conv3d.weight"]
    channels, in_ch = conv_in.shape[0], conv_in.shape[1]
    patch = round((in_ch / 3) ** (1 / 3))
    levels = 1 + max(int(k.split(".")[2]) for k in enc_sd if k.startswith("encoder.down."))
    mult = []
    for i in range(levels):
        w = enc_sd[f"encoder.down.{i}.block.0.conv1.0.conv3d.weight"]
        mult.append(w.shape[0] // channels)
    blocks = 1 + max(int(k.split(".")[4]) for k in enc_sd if k.startswith("encoder.down.0.block."))
    z_channels = enc_sd["encoder.conv_out.1.conv3d.weight"].shape[0]
    discrete = any(k.startswith("inv_quant.") for k in dec_sd) or "quantizer._levels" in enc_sd
    post = dec_sd["post_quant_conv.conv3d.weight"]
    n_s = sum(f"encoder.down.{i}.downsample.conv1.conv3d.weight" in enc_sd for i in range(levels))
    n_t = sum(f"encoder.down.{i}.downsample.conv2.conv3d.weight" in enc_sd for i in range(levels))
    kw = dict(
        name="inferred",
        discrete=discrete,
        channels=channels,
        channels_mult=tuple(mult),
        num_res_blocks=blocks,
        patch_size=patch,
        z_channels=z_channels,
        spatial_compression=patch * 2**n_s,
        temporal_compression=patch * 2**n_t,
    )
    if discrete:
        kw["embedding_dim"] = post.shape[1]
        if "quantizer._levels" in enc_sd:
            kw["levels"] = tuple(int(v) for v in enc_sd["quantizer._levels"].tolist())
    else:
        kw["latent_channels"] = post.shape[1]
    return TokenizerConfig(**kw)


def config_for_folder(folder: Path, enc_sd, dec_sd, override: TokenizerConfig | str | None) -> TokenizerConfig:
    """The config of a weight folder: an explicit override, our `tokenizer_config.json`, the folder's name
    (e.g. `Cosmos-0.1-Tokenizer-DV4x8x8`, as `huggingface-cli download` names it), or the tensor shapes."""
    if isinstance(override, TokenizerConfig):
        return override
    if isinstance(override, str):
        cfg = resolve_name(override)
        if cfg is None:
            raise KeyError(f"unknown tokenizer config {override!r}; known: {', '.join(sorted(REGISTRY))}")
        return cfg
    for name in (CONFIG_FILE, "config.json"):
        p = folder / name
        if p.is_file():
            try:
                data = json.loads(p.read_text())
            except json.JSONDecodeError as e:
                raise TokenizerLoadError(f"{p}: not valid JSON ({e})") from e
            if isinstance(data, dict) and "channels_mult" in data:
                return TokenizerConfig.from_dict(data)
    by_name = resolve_name(folder.name) or resolve_name(f"nvidia/{folder.name}")
    if by_name is not None:
        return by_name
    return _infer_from_keys(enc_sd, dec_sd)


def local_candidates(name: str) -> list[Path]:
    """Folders checked before the hub: `$COSMOS_NEMO_CHECKPOINTS/<name>` and `./checkpoints/<name>`."""
    short = name.split("/")[-1]
    roots = [Path(os.environ["COSMOS_NEMO_CHECKPOINTS"])] if os.environ.get("COSMOS_NEMO_CHECKPOINTS") else []
    roots.append(Path("checkpoints"))
    return [r / short for r in roots]


def download_from_hub(hub_id: str, cache_dir: str | None = None) -> Path:
    """Fetch `encoder.jit`/`decoder.jit` of a hub repo with huggingface_hub; clear error when offline."""
    short = hub_id.split("/")[-1]
    how = (
        f"download it where there is network (`huggingface-cli download {hub_id} encoder.jit decoder.jit "
        f"--local-dir checkpoints/{short}`) and pass that folder: load_video_tokenizer('checkpoints/{short}'), "
        f"or place it at one of {[str(p) for p in local_candidates(hub_id)]}"
    )
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - huggingface_hub is a dependency
        raise TokenizerNotAvailableError(f"huggingface_hub is not installed, so {hub_id} cannot be fetched; {how}") from e
    try:
        path = snapshot_download(repo_id=hub_id, allow_patterns=list(JIT_FILES), cache_dir=cache_dir)
    except Exception as e:  # offline mode, no network, gated repo, missing auth: all end the same way
        raise TokenizerNotAvailableError(
            f"could not get {hub_id} from the Hugging Face hub ({type(e).__name__}: {str(e).splitlines()[0]}); {how}"
        ) from e
    folder = Path(path)
    if weight_files(folder) is None:
        raise TokenizerNotAvailableError(f"{hub_id} was fetched to {folder} but has no encoder.jit/decoder.jit; {how}")
    return folder
