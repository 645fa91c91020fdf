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


def resolve_device(device: str | None) -> str:
    """The device given, or cuda when a GPU is there, else cpu."""
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def compute_dtype(device: str, dtype: str | None) -> str:
    """The dtype given, or bfloat16 on cuda (as the reference) and float32 on cpu."""
    return dtype or ("bfloat16" if str(device).startswith("cuda") else "float32")


@dataclass(kw_only=True)
class TextSourceConfig:
    """Where the text embeddings of a diffusion dataset come from (`prepare text-embeddings`, `prepare
    latents`), read from the reference layout DATASET/{videos,metas,t5_xxl}/ (text_embeddings.py)."""

    dataset_path: Path = setting(
        flags=("--dataset_path", "--dataset-path"),
        help="the dataset folder: videos/*.mp4 (any FFmpeg-readable container), metas/<stem>.txt captions (or "
             "Predict2.5's captions/<stem>.json), optional t5_xxl/<stem>.pickle embeddings")
    text_source: str = setting(
        "auto", flags=("--text-source", "--text_source"), metavar="{auto,compute,pickles,FILE}",
        help="compute: run --text-encoder on the captions; pickles: read DATASET/t5_xxl/<stem>.pickle (needs "
             "--trust-pickle); FILE: a .safetensors written by `prepare text-embeddings`; auto: "
             "DATASET/text_embeddings.safetensors when it exists, else the t5_xxl pickles when there are any, else "
             "compute")
    trust_pickle: bool = setting(
        False, flags=("--trust-pickle", "--trust_pickle"),
        help="allow reading the reference's t5_xxl/*.pickle files. A pickle can run arbitrary code when loaded, so "
             "this is off by default; even with it only numpy arrays are accepted")
    text_encoder: str = setting(
        "google-t5/t5-11b", flags=("--text-encoder", "--text_encoder", "--encoder"),
        help="text encoder: google-t5/t5-11b (alias t5-11b; the T5-XXL encoder, 1024-d, 512 tokens, the reference), "
             "minilm (bundled offline MiniLM-L6, 384-d, 256 tokens), reason1 (Predict2.5: Cosmos-Reason1 FULL_CONCAT, "
             "28 normalised layers, 100352-d, 512 tokens; its checkpoint folder in --encoder-path), reason1-tiny (a "
             "random 4-layer Qwen2.5-VL of the same path, 512-d, for CPU runs), a local folder (T5 or BERT-like, "
             "with its tokenizer; a Qwen2.5-VL folder is Reason1), or any transformers hub id")
    encoder_path: str | None = setting(
        None, flags=("--encoder-path", "--encoder_path"),
        help="with --encoder reason1: the local Cosmos-Reason1-7B checkpoint folder (a download of "
             "nvidia/Cosmos-Reason1-7B, or a diffusers Cosmos-Predict2.5 folder with text_encoder/ and tokenizer/)")
    prompt_length: int | None = setting(
        None, flags=("--prompt_length", "--prompt-length"),
        help="tokens per prompt L (padded with zeros / truncated; Reason1: with its pad token); None means 512 for "
             "T5, Reason1 and the pickles, 256 for MiniLM")
    text_batch_size: int = setting(
        8, flags=("--text-batch-size", "--text_batch_size"),
        help="prompts per text-encoder call (part of the settings: it can change float rounding)")
    text_dtype: str = setting(
        "float16", flags=("--text-dtype", "--text_dtype"), choices=("float16", "bfloat16", "float32"),
        help="dtype the embeddings are stored in (the reference pickles are float16)")
    prompt_type: str = setting(
        "long", flags=("--prompt_type", "--prompt-type"), choices=("long", "medium", "short"),
        help="which caption of a Predict2.5 captions/<stem>.json to use")
    captioner: str | None = setting(
        None, help="the captioner key of captions/<stem>.json; None means the first one in each file")
    device: str | None = setting(
        None, help="device of the encoders: cpu, cuda, cuda:1; None means cuda if available, else cpu")
    dtype: str | None = setting(
        None, choices=("float32", "bfloat16", "float16"),
        help="compute dtype of the encoders; None means bfloat16 on cuda (as the reference) and float32 on cpu")
    overwrite: bool = setting(
        False, help="replace an output made from other inputs or settings; without it such an output is refused "
                    "before any work")
    progress: bool = setting(True, flags=("--no-progress", "--no_progress"), help="no progress bars")


@dataclass(kw_only=True)
class TextEmbeddingsConfig(TextSourceConfig):
    """`prepare text-embeddings`: each field is one flag of the command (`--help` is built from them)."""

    text_source: str = setting(
        "compute", flags=("--text-source", "--text_source"), choices=("compute", "pickles"),
        help="compute: run --text-encoder on the captions; pickles: convert the reference's DATASET/t5_xxl/*.pickle "
             "files (needs --trust-pickle) into the safetensors file")
    output: Path | None = setting(
        None, help="the .safetensors file to write (embeddings [P,L,D], mask [P,L], one row per distinct caption, "
                   "the prompts in its metadata); None means DATASET/text_embeddings.safetensors")
    write_pickles: bool = setting(
        False, flags=("--write-pickles", "--write_pickles"),
        help="also write DATASET/t5_xxl/<stem>.pickle in the reference's layout ([np.ndarray[n_tokens, D] float16], "
             "trimmed to each caption's true length) for the reference training code")
    prompt: str | None = setting(
        None, help="first write this caption to DATASET/metas/<stem>.txt for every video (replacing existing ones), as "
                   "the reference's get_t5_embeddings_from_cosmos_nemo_assets.py --prompt does")


@dataclass(kw_only=True)
class LatentsConfig(TextSourceConfig):
    """`prepare latents`: each field is one flag of the command (`--help` is built from them)."""

    output_dir: Path = setting(
        flags=("--output_dir", "--output-dir"),
        help="the DiT latent dataset folder to write (dataset.json, latents-*.safetensors, manifest.jsonl, "
             "text_embeddings.safetensors); a rerun resumes an interrupted run")
    vae: str = setting(
        "wan2.1", choices=("wan2.1", "cosmos-cv"),
        help="wan2.1: Wan2.1 VAE through diffusers' AutoencoderKLWan (Predict2/2.5; 4x8x8, fixed 16 means/stds); "
             "cosmos-cv: the Cosmos continuous tokenizer (Predict1: Cosmos-Tokenize1-CV8x8x8-720p, 8x8x8) with its "
             "per-channel, per-frame mean_std.pt")
    vae_path: str | None = setting(
        None, flags=("--vae-path", "--vae_path"),
        help="the VAE weights: for wan2.1 a diffusers folder (config.json + weights, or its vae/ subfolder) or hub id "
             "(default Wan-AI/Wan2.1-T2V-1.3B-Diffusers); for cosmos-cv a tokenizer folder (encoder.jit/decoder.jit + "
             "mean_std.pt) or released name (default nvidia/Cosmos-Tokenize1-CV8x8x8-720p)")
    mean_std: str | None = setting(
        None, flags=("--mean-std", "--mean_std"),
        help="cosmos-cv: the latent statistics file ((mean, std) as C x T values; mean_std.pt read weights-only, or a "
             ".safetensors with mean and std); None means mean_std.pt in the tokenizer folder")
    latent_scale: float | None = setting(
        None, flags=("--latent-scale", "--latent_scale"),
        help="multiplies the normalised latent (the reference's sigma_data): None means 0.5 for cosmos-cv (Predict1) "
             "and 1.0 for wan2.1 (Predict2/2.5)")
    num_frames: int | None = setting(
        None, flags=("--num_frames", "--num-frames"),
        help="frames per clip; must be 1 + k*t for the VAE's temporal compression t (wan2.1: 4, e.g. 93; cosmos-cv "
             "CV8x8x8: 8, e.g. 121); None means 93 for wan2.1 and 121 for cosmos-cv (the reference's)")
    video_size: list[int] | None = setting(
        None, flags=("--video_size", "--video-size"), metavar="H W", nargs=2,
        help="clip height and width in pixels, multiples of the VAE's spatial compression (8); None means 704 1280 "
             "(the reference's)")
    sequence_interval: int = setting(
        1, flags=("--sequence_interval", "--sequence-interval"),
        help="take every k-th frame of the video into a clip (the reference's sequence_interval), so a clip spans "
             "(num_frames - 1) * k + 1 source frames")
    start_frame_interval: int | None = setting(
        None, flags=("--start_frame_interval", "--start-frame-interval"),
        help="source frames between consecutive clip starts (the reference's start_frame_interval, whose default 1 "
             "makes a clip at every frame); None means non-overlapping clips ((num_frames - 1) * sequence_interval + 1)")
    resize_mode: str = setting(
        "crop", flags=("--resize-mode", "--resize_mode"), choices=("crop", "pad", "stretch"),
        help="crop: scale to cover --video_size then center-crop; pad: scale to fit and center on black; stretch: "
             "resize each axis (the reference's Resize_Preprocess, which changes the aspect ratio)")
    allow_upscale: bool = setting(
        False, flags=("--allow-upscale", "--allow_upscale"),
        help="use videos smaller than --video_size by upscaling them; without it they are skipped with a reason")
    latent_dtype: str = setting(
        "float32", flags=("--latent-dtype", "--latent_dtype"), choices=("float32", "bfloat16"),
        help="dtype the latents are stored in")
    workers: int = setting(
        1, help="parallel worker processes; the output is byte-identical for any number")
    batch_size: int = setting(
        1, flags=("--batch-size", "--batch_size"),
        help="clips of one video encoded per VAE call (part of the settings: it can change float rounding)")
    threads_per_worker: int = setting(
        1, flags=("--threads-per-worker", "--threads_per_worker"),
        help="torch threads per worker; part of the settings (a different value may change float rounding)")
    decode_threads: int | None = setting(
        None, flags=("--decode-threads", "--decode_threads"),
        help="FFmpeg decoder threads per worker; None means automatic with 1 worker and 1 with several")


__all__ = ["ARTokensConfig", "LatentsConfig", "PromptsConfig", "TextEmbeddingsConfig", "TextSourceConfig", "TokenizeConfig",
           "V2WConfig", "compute_dtype", "resolve_device"]
