"""The Predict2.5 text path: Cosmos-Reason1 `FULL_CONCAT` embeddings, computed online (diffusion_models.md §2).

As the reference (cosmos-predict2.5 `TextEncoder.compute_text_embeddings_online` with
`embedding_concat_strategy=FULL_CONCAT`; diffusers `Cosmos2_5_PredictBasePipeline._get_prompt_embeds`):

1. each prompt becomes a chat: the system turn "You are a helpful assistant who will provide prompts to an
   image generator." and the prompt as the user turn, rendered with the tokenizer's chat template
   (Qwen2.5-VL's; `add_generation_prompt=False`, `add_vision_id=False`) and tokenized;
2. the ids are padded on the right with the pad id (`<|endoftext|>`) or truncated (the first tokens kept) to
   512 tokens;
3. the Qwen2.5-VL model runs on the ids alone (no attention mask: causal attention, so a prompt's tokens never
   see the padding, and the padding positions hold the real states of the pad tokens, which are kept);
4. `hidden_states[1:]` (the output of every decoder layer, the last one after the final RMSNorm, as
   transformers returns them; not the embedding output) are each normalised per token over the channels,
   `(h - h.mean(-1)) / (h.std(-1) + 1e-8)` (torch's std: unbiased), and concatenated along the channels:
   `[B, 512, layers * hidden]`, 28 x 3584 = 100352 for Cosmos-Reason1-7B.

The normalisation is computed in float32 whatever the model's dtype (the reference normalises in the model's
dtype, bf16 on a GPU; the two differ by bf16 rounding). The mask returned beside the embeddings is True on the
chat's tokens and False on the padding; the DiT does not use it (the reference's cross-attention has no mask).

Encoders, by name (`--text-encoder` / `--encoder` of `prepare text-embeddings` and `generate diffusion`):

- `reason1` with a checkpoint folder (`--encoder-path` / `--text-encoder-path`): a local copy of
  `nvidia/Cosmos-Reason1-7B` (a transformers Qwen2.5-VL folder: config.json, weights, tokenizer), or a diffusers
  Cosmos-Predict2.5 folder (its `text_encoder/` and `tokenizer/`). Such a folder given directly as the encoder
  is recognised by its config's `model_type` (`qwen2_5_vl`).
- `reason1-tiny`: a random-init `Qwen2_5_VLForConditionalGeneration` built from a config (4 layers of width
  128, so 512-d embeddings, the `crossattn_proj_in` of `tiny_predict25`) with a byte-level tokenizer built
  offline (256 byte tokens + the Qwen chat special tokens, the Qwen2.5-VL chat template); its weights depend
  only on the seed. It exercises the exact code path on a CPU; its embeddings carry no meaning.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from cosmos_nemo.tokenizers.text import TextEncoderNotAvailableError, TextEncoding

HUB_ID = "nvidia/Cosmos-Reason1-7B"
SYSTEM_PROMPT = "You are a helpful assistant who will provide prompts to an image generator."
MAX_LENGTH = 512  # NUM_EMBEDDING_PADDING_TOKENS
NORM_EPS = 1e-8
PAD_TOKEN = "<|endoftext|>"
TINY_NAME = "cosmos-reason1-tiny"
RELEASED_NAMES = {"reason1", "cosmos-reason1", "cosmos-reason1-7b", HUB_ID.lower()}
TINY_NAMES = {"reason1-tiny", TINY_NAME}
QWEN_VL_MODEL_TYPES = ("qwen2_5_vl",)

# Qwen2.5-VL-7B-Instruct's chat template (also Cosmos-Reason1-7B's); used when a tokenizer ships none.
QWEN25_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = (PAD_TOKEN, "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                  "<|video_pad|>")
# The tiny model: layers x hidden = 512 = tiny_predict25's crossattn_proj_in. Head dim 32 -> M-RoPE sections
# (temporal, height, width) summing to 16, in the proportions of the 7B's (16, 24, 24).
TINY_CONFIG = dict(layers=4, hidden=128, heads=4, kv_heads=2, intermediate=256, mrope_section=(4, 6, 6), seed=0,
                   init_std=0.02)


class Reason1Error(TextEncoderNotAvailableError):
    """A Cosmos-Reason1 encoder that cannot be used as asked (the message says what to give)."""


# ------------------------------------------------------------------------------------------------------
# Names


def is_tiny(spec) -> bool:
    return spec is not None and str(spec).strip().lower() in TINY_NAMES


def is_released_name(spec) -> bool:
    return spec is not None and str(spec).strip().lower() in RELEASED_NAMES


def _model_type(folder: Path) -> str | None:
    try:
        return json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def checkpoint_folders(path: str | Path) -> tuple[Path, Path] | None:
    """(model folder, tokenizer folder) of a Qwen2.5-VL checkpoint: the folder itself, or a diffusers
    Cosmos-Predict2.5 folder's text_encoder/ (+ tokenizer/); None when it is neither."""
    path = Path(path)
    if not path.is_dir():
        return None
    if _model_type(path) in QWEN_VL_MODEL_TYPES:
        return path, path
    if _model_type(path / "text_encoder") in QWEN_VL_MODEL_TYPES:
        tok = path / "tokenizer"
        return path / "text_encoder", (tok if tok.is_dir() else path / "text_encoder")
    return None


def is_reason1(spec) -> bool:
    """Whether `spec` (an encoder name or folder) selects the Reason1 text path."""
    return is_tiny(spec) or is_released_name(spec) or (spec is not None and checkpoint_folders(spec) is not None)


def _download_hint(flag: str) -> str:
    return (f"the Cosmos-Reason1 text encoder needs its checkpoint: download {HUB_ID} where the hub is reachable "
            f"(`huggingface-cli download {HUB_ID} --local-dir ./checkpoints/Cosmos-Reason1-7B`) and pass that folder "
            f"with {flag}; for a tiny random encoder on a CPU use reason1-tiny")


def resolve_spec(encoder: str | None, encoder_path: str | None, *, path_flag: str = "--encoder-path",
                 encoder_flag: str = "--encoder") -> str | None:
    """One encoder spec from an encoder name and the Reason1 checkpoint flag: `reason1` + PATH -> the folder
    (checked to be a Qwen2.5-VL checkpoint); `reason1` alone -> Reason1Error naming the hub id; other names
    unchanged (a path with them is an error)."""
    if encoder_path is not None and str(encoder_path).strip():
        if encoder is not None and not is_released_name(encoder) and checkpoint_folders(encoder) is None:
            raise Reason1Error(f"{path_flag} names the Cosmos-Reason1 checkpoint of {encoder_flag} reason1, not of "
                               f"{encoder_flag} {encoder}; give other encoders' folders as {encoder_flag} PATH")
        path = Path(str(encoder_path)).expanduser()
        if not path.is_dir():
            raise Reason1Error(f"{path_flag} {encoder_path}: no such folder; {_download_hint(path_flag)}")
        if checkpoint_folders(path) is None:
            raise Reason1Error(f"{path_flag} {path}: not a Qwen2.5-VL checkpoint (its config.json model_type is "
                               f"{_model_type(path)!r}, expected {QWEN_VL_MODEL_TYPES[0]!r}, as {HUB_ID})")
        return str(path)
    if is_released_name(encoder):
        raise Reason1Error(f"{encoder_flag} {encoder}: no {path_flag}; {_download_hint(path_flag)}")
    return encoder


# ------------------------------------------------------------------------------------------------------
# The computation


def conversation(prompt: str) -> list[dict]:
    """The reference's chat of one prompt: the system turn, then the prompt as the user turn."""
    return [{"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
            {"role": "user", "content": [{"type": "text", "text": prompt}]}]


def pad_id_of(tokenizer) -> int:
    pid = tokenizer.pad_token_id
    if pid is None:
        pid = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    if pid is None or (getattr(tokenizer, "unk_token_id", None) is not None and pid == tokenizer.unk_token_id):
        raise Reason1Error(f"the tokenizer has no pad token and no {PAD_TOKEN}; it is not a Qwen2.5-VL tokenizer")
    return int(pid)


def token_ids(tokenizer, prompts: Sequence[str], length: int = MAX_LENGTH) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [B, length], true lengths [B]): each prompt's chat, tokenized, right-padded with the pad id or
    truncated to its first `length` tokens."""
    template = tokenizer.chat_template or QWEN25_VL_CHAT_TEMPLATE
    pad = pad_id_of(tokenizer)
    rows, lengths = [], []
    for prompt in prompts:
        out = tokenizer.apply_chat_template(conversation(prompt), chat_template=template, tokenize=True,
                                            add_generation_prompt=False, add_vision_id=False)
        ids = list(out["input_ids"] if not isinstance(out, list) else out)
        lengths.append(min(len(ids), length))
        rows.append(ids[:length] + [pad] * (length - len(ids)))
    return torch.tensor(rows, dtype=torch.long), torch.tensor(lengths, dtype=torch.long)


def full_concat(hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
    """`FULL_CONCAT`: `hidden_states[1:]`, each normalised per token over the channels (in float32), concatenated
    along the channels."""
    out = []
    for h in hidden_states[1:]:
        h = h.float()
        out.append((h - h.mean(dim=-1, keepdim=True)) / (h.std(dim=-1, keepdim=True) + NORM_EPS))
    return torch.cat(out, dim=-1)


class Reason1TextEncoder:
    """`encode(prompts) -> TextEncoding` (float32 `[B, L, layers * hidden]`, bool mask `[B, L]`) with a Qwen2.5-VL
    model and tokenizer; the interface of `cosmos_nemo.tokenizers.text.TextEncoder`."""

    def __init__(self, model, tokenizer, name: str, max_length: int | None = None, device="cpu", batch_size: int = 8):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.max_length = int(max_length or MAX_LENGTH)
        self.device = torch.device(device)
        self.batch_size = max(1, int(batch_size))
        text = model.config.get_text_config()
        self.num_layers = int(text.num_hidden_layers)
        self.hidden_size = int(text.hidden_size)

    @property
    def dim(self) -> int:
        return self.num_layers * self.hidden_size

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> TextEncoding:
        if isinstance(prompts, str):
            raise TypeError("encode takes a list of prompts, not a single string")
        prompts = list(prompts)
        if not prompts:
            return TextEncoding(torch.zeros(0, self.max_length, self.dim), torch.zeros(0, self.max_length, dtype=torch.bool))
        embs, masks = [], []
        for i in range(0, len(prompts), self.batch_size):
            ids, lengths = token_ids(self.tokenizer, prompts[i : i + self.batch_size], self.max_length)
            # the language model only (no lm_head logits); the same hidden states as the full model's forward
            out = self.model.model(input_ids=ids.to(self.device), output_hidden_states=True)
            if len(out.hidden_states) != self.num_layers + 1:
                raise RuntimeError(f"{self.name}: {len(out.hidden_states)} hidden states for {self.num_layers} layers")
            embs.append(full_concat(out.hidden_states).cpu())
            masks.append(torch.arange(self.max_length)[None, :] < lengths[:, None])
        return TextEncoding(torch.cat(embs), torch.cat(masks))

    __call__ = encode


# ------------------------------------------------------------------------------------------------------
# Building and loading


def _transformers():
    from cosmos_nemo.compat import hide_unusable_torchvision

    hide_unusable_torchvision()
    import transformers

    return transformers


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer without merges (one token per UTF-8 byte, ids 0-255 in the order of the
    byte-level alphabet) plus the Qwen chat special tokens (ids 256-262), pad `<|endoftext|>`, right padding,
    the Qwen2.5-VL chat template. Built in memory: no files, no network."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tf = _transformers()
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD_TOKEN, eos_token="<|im_end|>",
                                      chat_template=QWEN25_VL_CHAT_TEMPLATE, padding_side="right",
                                      truncation_side="right", model_max_length=32768)


def tiny_config(tokenizer=None, **overrides):
    """The `Qwen2_5_VLConfig` of the tiny encoder (TINY_CONFIG, `overrides` replacing its entries)."""
    tf = _transformers()
    c = dict(TINY_CONFIG, **overrides)
    tokenizer = tokenizer or build_tiny_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab = -(-len(tokenizer) // 64) * 64
    head_dim = c["hidden"] // c["heads"]
    if 2 * sum(c["mrope_section"]) != head_dim:
        raise ValueError(f"mrope_section {c['mrope_section']} must sum to head_dim / 2 = {head_dim // 2}")
    text = dict(vocab_size=vocab, hidden_size=c["hidden"], intermediate_size=c["intermediate"],
                num_hidden_layers=c["layers"], num_attention_heads=c["heads"], num_key_value_heads=c["kv_heads"],
                max_position_embeddings=4096, max_window_layers=c["layers"],
                rope_parameters={"rope_type": "default", "mrope_section": list(c["mrope_section"]), "rope_theta": 1e6},
                bos_token_id=ids[PAD_TOKEN], eos_token_id=ids["<|im_end|>"], pad_token_id=ids[PAD_TOKEN])
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=c["hidden"],
                  fullatt_block_indexes=[0])
    return tf.Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                               video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                               vision_end_token_id=ids["<|vision_end|>"])


def build_tiny_model(config=None, seed: int | None = None):
    """A random-init `Qwen2_5_VLForConditionalGeneration` of `config` (default `tiny_config()`), reproducible:
    every weight matrix is drawn N(0, init_std) from a generator seeded with `seed` (parameters in name order);
    norm weights are 1 and biases 0, as constructed."""
    tf = _transformers()
    config = config or tiny_config()
    seed = TINY_CONFIG["seed"] if seed is None else int(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = tf.Qwen2_5_VLForConditionalGeneration(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * TINY_CONFIG["init_std"])
    return model.eval()


def load_tiny(device="cpu", dtype: torch.dtype = torch.float32, max_length: int | None = None,
              seed: int | None = None) -> Reason1TextEncoder:
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tiny_config(tokenizer), seed=seed).to(device=device, dtype=dtype)
    return Reason1TextEncoder(model, tokenizer, TINY_NAME, max_length=max_length, device=device)


def load_checkpoint(path: str | Path, device="cpu", dtype: torch.dtype = torch.bfloat16,
                    max_length: int | None = None) -> Reason1TextEncoder:
    """Cosmos-Reason1 (or any Qwen2.5-VL) from a local folder: a transformers checkpoint, or a diffusers
    Cosmos-Predict2.5 folder (text_encoder/ + tokenizer/)."""
    folders = checkpoint_folders(path)
    if folders is None:
        raise Reason1Error(f"{path} is not a Qwen2.5-VL checkpoint folder; {_download_hint('the folder')}")
    model_dir, tok_dir = folders
    tf = _transformers()
    from cosmos_nemo.io.tensors import check_safetensors_folder

    try:
        check_safetensors_folder(model_dir)  # a truncated shard is named (TensorFileError is a ValueError)
        tokenizer = tf.AutoTokenizer.from_pretrained(str(tok_dir))
        model = tf.Qwen2_5_VLForConditionalGeneration.from_pretrained(str(model_dir), dtype=dtype)
    except (OSError, ValueError) as e:
        raise Reason1Error(f"cannot load the Qwen2.5-VL checkpoint {model_dir}: {e}") from e
    return Reason1TextEncoder(model.to(device), tokenizer, Path(path).name, max_length=max_length, device=device)


def load_encoder(spec, device="cpu", dtype: torch.dtype = torch.float32, max_length: int | None = None):
    """Any text encoder by spec: the Reason1 ones (module docstring) or, for other names and folders,
    `cosmos_nemo.tokenizers.text.load_text_encoder` (T5, MiniLM, BERT-like)."""
    if is_tiny(spec):
        return load_tiny(device=device, dtype=dtype, max_length=max_length)
    if is_released_name(spec):
        resolve_spec(spec, None, encoder_flag="the encoder")  # raises, naming the hub id
    if spec is not None and checkpoint_folders(spec) is not None:
        return load_checkpoint(spec, device=device, dtype=dtype, max_length=max_length)
    from cosmos_nemo.tokenizers.text import load_text_encoder

    return load_text_encoder(spec, device=device, dtype=dtype, max_length=max_length)


__all__ = ["HUB_ID", "MAX_LENGTH", "QWEN25_VL_CHAT_TEMPLATE", "Reason1Error", "Reason1TextEncoder", "SYSTEM_PROMPT",
           "TINY_CONFIG", "TINY_NAME", "build_tiny_model", "build_tiny_tokenizer", "checkpoint_folders", "conversation",
           "full_concat", "is_reason1", "load_checkpoint", "load_encoder", "load_tiny", "resolve_spec", "tiny_config",
           "token_ids"]
