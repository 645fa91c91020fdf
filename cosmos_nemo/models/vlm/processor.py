"""What the Reasoner model reads: its processor (tokenizer, chat template, video/image processor) and the encoding
of one conversation into model inputs with labels on the assistant's tokens only.

`build_processor(cfg)`: the backbone's own processor for `name="qwen3_vl"` (`AutoProcessor.from_pretrained`), or,
for `name="tiny"`, a `Qwen3VLProcessor` over a byte-level tokenizer (256 byte tokens + Qwen's special tokens) and a
chat template in Qwen's `<|im_start|>role ... <|im_end|>` format, built here with no download.

`encode(sample, processor, cfg)`: a conversation `{"messages": [{"role", "content"}], "videos": [path, ...],
"images": [path, ...]}` (content: a string, or a list of `{"type": "video"|"image"|"text"}` parts) -> input ids,
labels (-100 everywhere except the content of each assistant turn and its closing `<|im_end|>`), and the vision
inputs. Every assistant turn must be found in the token sequence, or the sample is refused: the mask is never
silently empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

IGNORE = -100
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>")

# Qwen's chat format: each turn `<|im_start|>{role}\n{content}<|im_end|>\n`; a video or image part is the vision
# placeholder the processor expands; the generation prompt opens an assistant turn.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class ProcessorUnavailable(OSError):
    """transformers' Qwen3-VL processor cannot be built here (its video processor needs a working torchvision)."""


def torchvision_problem() -> str | None:
    """Why transformers' Qwen3-VL video processor cannot run here, or None when it can."""
    try:
        import torchvision  # noqa: F401
        from torchvision.transforms.v2 import functional  # noqa: F401
    except (ImportError, RuntimeError) as err:
        import torch

        return (f"the Reasoner's video processor (transformers' Qwen3VLVideoProcessor) needs torchvision built for "
                f"torch {torch.__version__} ({type(err).__name__}: {str(err).splitlines()[0][:160]}). Install the "
                "matching build: `pip install --no-deps torchvision==<the release paired with your torch>` (GPU) or "
                "`pip install --no-deps torchvision --index-url https://download.pytorch.org/whl/cpu` (CPU torch)")
    return None


class SampleError(ValueError):
    """A conversation that cannot become a training sample (the loader skips it and reports why)."""


def tiny_tokenizer():
    """A byte-level tokenizer (every UTF-8 string encodes, one token per byte) with Qwen's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                                                         "vision_start_token": "<|vision_start|>",
                                                         "vision_end_token": "<|vision_end|>"})


def build_processor(cfg):
    """The processor of the model `cfg` describes (see the module docstring)."""
    problem = torchvision_problem()
    if problem:
        raise ProcessorUnavailable(problem)
    if cfg.name == "tiny":
        from transformers import Qwen3VLProcessor, Qwen3VLVideoProcessor
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

        video = Qwen3VLVideoProcessor(do_sample_frames=False)
        images = Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2)  # Qwen3-VL values
        return Qwen3VLProcessor(image_processor=images, tokenizer=tiny_tokenizer(),
                                video_processor=video, chat_template=TINY_CHAT_TEMPLATE)
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(cfg.model_name)
    except OSError as err:
        raise FileNotFoundError(
            f"cannot load the processor of {cfg.model_name!r} ({str(err).splitlines()[0][:200]}): pass a local "
            "snapshot folder as model.model_name (`hf download Qwen/Qwen3-VL-8B-Instruct --local-dir DIR`), or run "
            "where the Hugging Face hub can be reached") from None


def token_ids(processor) -> dict[str, int]:
    tok = processor.tokenizer
    return {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}


def patch_factor(processor) -> int:
    """Frame sides must be multiples of this (vision patch size x spatial merge size)."""
    vp = processor.video_processor
    return int(getattr(vp, "patch_size", 16)) * int(getattr(vp, "merge_size", 2))


def frame_size(height: int, width: int, max_pixels: int, factor: int) -> tuple[int, int]:
    """(h, w): the frame resized to at most `max_pixels` pixels, aspect ratio kept as closely as multiples of
    `factor` allow, each side at least `factor`."""
    scale = (max_pixels / float(height * width)) ** 0.5
    h = max(factor, int(round(height * scale / factor)) * factor)
    w = max(factor, int(round(width * scale / factor)) * factor)
    while h * w > max_pixels and max(h, w) > factor:
        if h >= w:
            h -= factor
        else:
            w -= factor
    return h, w


def sample_indices(total: int, count: int) -> list[int]:
    """`count` frame indices spread evenly over `total` frames (first and last included)."""
    return [int(round(x)) for x in np.linspace(0, total - 1, count)]


def load_video(path, cfg, processor) -> tuple[np.ndarray, dict]:
    """[num_frames, h, w, 3] uint8 frames of the video at `path`, sampled and resized, and its metadata."""
    from cosmos_nemo.io.video import VideoDecodeError, probe, read_frames

    try:
        info = probe(path)
        frames = read_frames(path)
    except (VideoDecodeError, OSError, ValueError) as err:
        raise SampleError(f"{path}: {err}") from None
    if len(frames) == 0:
        raise SampleError(f"{path}: no frames")
    idx = sample_indices(len(frames), cfg.num_frames)
    picked = torch.from_numpy(np.ascontiguousarray(frames[idx])).permute(0, 3, 1, 2).float()
    h, w = frame_size(picked.shape[2], picked.shape[3], cfg.max_pixels, patch_factor(processor))
    if (h, w) != tuple(picked.shape[2:]):
        picked = torch.nn.functional.interpolate(picked, size=(h, w), mode="bilinear", antialias=True,
                                                 align_corners=False)
    out = picked.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    fps = float(getattr(info, "fps", 0) or 0) or 24.0
    return out, {"total_num_frames": len(frames), "fps": fps, "frames_indices": idx}


def load_image(path, cfg, processor) -> np.ndarray:
    """An image file (or an already decoded PIL image, as streamed hub records hold them), resized."""
    from PIL import Image

    if isinstance(path, Image.Image):
        arr = np.asarray(path.convert("RGB"))
    else:
        try:
            with Image.open(path) as img:
                arr = np.asarray(img.convert("RGB"))
        except OSError as err:
            raise SampleError(f"{path}: not a readable image ({err})") from None
    t = torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float()
    h, w = frame_size(t.shape[2], t.shape[3], cfg.max_pixels, patch_factor(processor))
    t = torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return t.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()


@dataclass
class Encoded:
    input_ids: torch.Tensor  # [L] int64
    labels: torch.Tensor  # [L] int64, IGNORE outside assistant content
    token_types: torch.Tensor  # [L] the processor's mm_token_type_ids (0 text, 1 image, 2 video), for 3D RoPE
    vision: dict  # pixel_values_videos / video_grid_thw / pixel_values / image_grid_thw (those present)

    def __len__(self) -> int:
        return int(self.input_ids.numel())


def processor_inputs(messages, videos, images, processor, add_generation_prompt: bool = False) -> dict:
    """The processor's tensors for a conversation whose media are already loaded: `videos` [(frames, meta)],
    `images` [array]."""
    from transformers.video_utils import VideoMetadata

    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    kwargs = {}
    if videos:
        kwargs["videos"] = [v for v, _ in videos]
        kwargs["videos_kwargs"] = dict(video_metadata=[VideoMetadata(**m) for _, m in videos],
                                       do_sample_frames=False, do_resize=False,
                                       cap_pixels_per_frame=False)  # frames are sized here
    if images:
        kwargs["images"] = list(images)
        kwargs["images_kwargs"] = dict(do_resize=False)
    return processor(text=[text], return_tensors="pt", **kwargs)


def assistant_mask(ids: list[int], processor) -> list[bool]:
    """True on the tokens of each assistant turn's content and its closing `<|im_end|>`: the tokens after
    `<|im_start|>assistant\\n` up to and including the next `<|im_end|>`."""
    special = token_ids(processor)
    start, end = special["<|im_start|>"], special["<|im_end|>"]
    header = processor.tokenizer.encode("assistant\n", add_special_tokens=False)
    mask = [False] * len(ids)
    i = 0
    while i < len(ids):
        if ids[i] == start and ids[i + 1:i + 1 + len(header)] == header:
            j = i + 1 + len(header)
            while j < len(ids) and ids[j] != end:
                mask[j] = True
                j += 1
            if j < len(ids):
                mask[j] = True
            i = j
        i += 1
    return mask


def encode(sample: dict, processor, cfg, root: Optional[Path] = None) -> Encoded:
    """One conversation -> `Encoded` (see the module docstring). Media paths are relative to `root`."""
    messages = sample["messages"]
    roles = [m.get("role") for m in messages]
    if "assistant" not in roles:
        raise SampleError("the conversation has no assistant turn: nothing to learn from")
    if any(r not in ("system", "user", "assistant") for r in roles):
        raise SampleError(f"unknown roles {sorted(set(roles) - {'system', 'user', 'assistant'})}")
    for m in messages:
        content = m.get("content")
        if m["role"] == "assistant" and not (isinstance(content, str) and content.strip()):
            raise SampleError("an assistant turn is empty or not text")
    base = Path(root) if root is not None else Path(".")
    videos = [load_video(base / v, cfg, processor) for v in sample.get("videos", [])]
    images = [load_image(base / p if isinstance(p, (str, Path)) else p, cfg, processor)
              for p in sample.get("images", [])]
    parts = [p.get("type") for m in messages if isinstance(m.get("content"), list) for p in m["content"]]
    if parts.count("video") != len(videos) or parts.count("image") != len(images):
        raise SampleError(f"the conversation has {parts.count('video')} video and {parts.count('image')} image "
                          f"placeholders but {len(videos)} videos and {len(images)} images")
    batch = processor_inputs(messages, videos, images, processor)
    ids = batch["input_ids"][0]
    if ids.numel() > cfg.max_tokens:
        raise SampleError(f"{ids.numel()} tokens, more than model.max_tokens={cfg.max_tokens}")
    mask = assistant_mask(ids.tolist(), processor)
    turns = roles.count("assistant")
    found = sum(1 for k in range(len(mask)) if mask[k] and (k == 0 or not mask[k - 1]))
    if found != turns:
        raise SampleError(f"found {found} assistant spans in the tokens for {turns} assistant turns (the chat "
                          "template does not write `<|im_start|>assistant\\n`)")
    labels = torch.where(torch.tensor(mask), ids, torch.full_like(ids, IGNORE))
    vision = {k: batch[k] for k in ("pixel_values_videos", "video_grid_thw", "pixel_values", "image_grid_thw")
              if k in batch}
    types = batch["mm_token_type_ids"][0].long() if "mm_token_type_ids" in batch else torch.zeros_like(ids)
    return Encoded(input_ids=ids.long(), labels=labels.long(), token_types=types, vision=vision)


def collate(items: list[Encoded], pad_id: int) -> dict:
    """A micro-batch: right-padded ids, labels (IGNORE on padding), attention mask, token types, concatenated
    vision inputs."""
    length = max(len(e) for e in items)
    ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    labels = torch.full((len(items), length), IGNORE, dtype=torch.long)
    attn = torch.zeros((len(items), length), dtype=torch.long)
    types = torch.zeros((len(items), length), dtype=torch.long)
    for row, e in enumerate(items):
        n = len(e)
        ids[row, :n], labels[row, :n], attn[row, :n], types[row, :n] = e.input_ids, e.labels, 1, e.token_types
    batch = {"input_ids": ids, "labels": labels, "attention_mask": attn, "mm_token_type_ids": types}
    for key in ("pixel_values_videos", "video_grid_thw", "pixel_values", "image_grid_thw"):
        parts = [e.vision[key] for e in items if key in e.vision]
        if parts:
            batch[key] = torch.cat(parts, dim=0)
    return batch
