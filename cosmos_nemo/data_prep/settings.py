"""The settings of the `prepare` commands: one dataclass per command, one field per setting and flag.

`cosmos-nemo prepare ar-tokens` / `v2w` / `prompts` build their flags from `ARTokensConfig`, `V2WConfig`
and `PromptsConfig` (data_prep/flags.py), so each default, type and help text is written once, on its
field, and Python callers get the same defaults as the command line. The video -> token settings the two
tokenizing commands share are `TokenizeConfig`; `settings()` resolves them into the engine's
`EngineSettings`. This module imports no torch, so building the command line stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cosmos_nemo.data_prep.flags import setting

if TYPE_CHECKING:
    from cosmos_nemo.data_prep.engine import EngineSettings


@dataclass(kw_only=True)
class TokenizeConfig:
    """The video -> token settings `prepare ar-tokens` and `prepare v2w` share, one flag per field (the
    flags of NVIDIA's prepare_dataset.py keep their spelling and meaning). `settings()` resolves them into
    the engine's `EngineSettings`."""

    encoder_path: str = setting(
        "nvidia/Cosmos-1.0-Tokenizer-DV8x16x16", flags=("--encoder_path", "--encoder-path"),
        help="video tokenizer: a hub id or name (nvidia/Cosmos-1.0-Tokenizer-DV8x16x16, Cosmos-0.1-Tokenizer-DV4x8x8), "
             "a local folder (NVIDIA's encoder.jit/decoder.jit, or one written by `cosmos-nemo train-tokenizer`), or "
             "'tiny' (small random-init tokenizer for CPU tests). A path to encoder.jit means its folder.")
    decoder_path: str | None = setting(
        None, flags=("--decoder_path", "--decoder-path"),
        help="accepted for compatibility with the reference script; tokenizing needs only the encoder, so it is unused")
    width: int = setting(1024, help="clip width in pixels after resize/crop (reference default)")
    height: int = setting(640, help="clip height in pixels after resize/crop (reference default)")
    num_context_frames: int = setting(
        33, flags=("--num_context_frames", "--num-context-frames"),
        help="frames per clip window; must be 1 + k*t for the tokenizer's temporal compression t (33 for 8x16x16, "
             "17 for 4x8x8)")
    tokenizer_compression_factor: str | None = setting(
        None, flags=("--tokenizer_compression_factor", "--tokenizer-compression-factor"),
        help="'t,h,w' the data is meant for (reference: '8,16,16'); when given it must equal the tokenizer's "
             "compression, else the run stops before any work; None means the tokenizer's own")
    stride: int | None = setting(
        None, help="frames between window starts; None means --num_context_frames (non-overlapping windows over the "
                   "whole video; the reference kept only the first window)")
    resize_mode: str = setting(
        "crop", choices=("crop", "pad"),  # clips.RESIZE_MODES, written out so the CLI imports no torch
        help="crop: scale so both sides cover the target then center-crop (reference); pad: scale to fit and center "
             "on black")
    allow_upscale: bool = setting(
        False, help="use videos smaller than the target by upscaling them; without it they are skipped with a reason")
    workers: int = setting(
        1, help="parallel worker processes (replaces the reference's torchrun ranks); the output is byte-identical "
                "for any number")
    batch_size: int = setting(
        4, help="clip windows of one video tokenized per encoder call (the reference encoder batch is <= 8)")
    device: str | None = setting(
        None, help="tokenizer device: cpu, cuda, cuda:1; None means cuda if available, else cpu")
    dtype: str | None = setting(
        None, choices=("float32", "bfloat16", "float16"),
        help="tokenizer compute dtype; None means bfloat16 on cuda (as the reference) and float32 on cpu")
    threads_per_worker: int = setting(
        1, help="torch threads per worker; part of the settings (a different value may change float rounding), so "
                "keep it fixed across reruns")
    decode_threads: int | None = setting(
        None, help="FFmpeg decoder threads per worker; None means automatic with 1 worker and 1 with several")
    overwrite: bool = setting(
        False, help="replace a complete dataset made from other inputs or settings; without it such a directory is "
                    "refused before any work")
    progress: bool = setting(True, flags=("--no-progress", "--no_progress"), help="no progress bars")

    def device_and_dtype(self) -> tuple[str, str]:
        """The device and dtype to tokenize with: as given, or cuda/bfloat16 when a GPU is there (the
        reference's choice), else cpu/float32."""
        import torch

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = self.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
        return device, dtype

    def settings(self) -> EngineSettings:
        from cosmos_nemo.data_prep.engine import EngineSettings

        device, dtype = self.device_and_dtype()
        return EngineSettings(
            tokenizer=str(self.encoder_path),
            frames=int(self.num_context_frames),
            height=int(self.height),
            width=int(self.width),
            stride=int(self.stride or self.num_context_frames),
            resize_mode=self.resize_mode,
            allow_upscale=bool(self.allow_upscale),
            batch_size=int(self.batch_size),
            device=device,
            dtype=dtype,
            threads_per_worker=int(self.threads_per_worker),
            decode_threads=int(self.decode_threads if self.decode_threads is not None else (0 if self.workers <= 1 else 1)),
        )


@dataclass(kw_only=True)
class ARTokensConfig(TokenizeConfig):
    """`prepare ar-tokens`: the shared tokenize settings plus where the videos are and where the dataset
    goes. Each field is one flag of the command (`--help` is built from them)."""

    input_videos_dir: Path = setting(
        flags=("--input_videos_dir", "--input-videos-dir"),
        help="folder of videos (searched recursively; hidden folders ignored)")
    output_prefix: Path = setting(
        flags=("--output_prefix", "--output-prefix"),
        help="output directory of the dataset (created; a rerun resumes an interrupted run)")
    recursive: bool = setting(
        True, flags=("--no-recursive", "--no_recursive"), help="only the top level of --input_videos_dir")
    captions: bool = setting(
        True, flags=("--no-captions", "--no_captions"), help="do not read captions into the manifest")


@dataclass(kw_only=True)
class V2WConfig(TokenizeConfig):
    """`prepare v2w`: the shared tokenize settings plus the jsonl to read, the output folder and the text
    encoder. Each field is one flag of the command (`--help` is built from them)."""

    input_jsonl: Path = setting(flags=("--input_jsonl", "--input-jsonl"), help="the jsonl to read")
    output_dir: Path = setting(
        flags=("--output_dir", "--output-dir"),
        help="output directory (never deleted wholesale, unlike the reference; a rerun resumes)")
    text_encoder: str = setting(
        "t5-11b", help="text encoder: t5-11b (google-t5/t5-11b encoder, 1024-d x 512 tokens, the reference), minilm "
                       "(bundled offline MiniLM-L6, 384-d x 256), a local folder, or a hub id")
    prompt_length: int | None = setting(
        None, help="text tokens per prompt L; None means 512 for T5 and 256 for MiniLM")
    text_batch_size: int = setting(8, help="prompts per text-encoder call")
    split_string: str | None = setting(
        None, flags=("--split_string", "--split-string"),
        help="accepted for compatibility; splits are taken when the dataset is read (the training recipe's "
             "split_string, deterministic), so this command writes one dataset")


@dataclass(kw_only=True)
class PromptsConfig:
    """`prepare prompts`: each field is one flag of the command (`--help` is built from them)."""

    dataset_path: Path = setting(flags=("--dataset_path", "--dataset-path"), help="folder holding videos/")
    prompt: str = setting(help='caption for every video, e.g. "A video of sks teal robot."')
    overwrite: bool = setting(False, help="replace existing non-empty captions; without it they are kept")
    jsonl: bool = setting(False, help="also write DATASET/prompts.jsonl for `prepare v2w`")


__all__ = ["ARTokensConfig", "PromptsConfig", "TokenizeConfig", "V2WConfig"]
