"""`cosmos-nemo evaluate videophy2`: how well a Reasoner scores videos, as accuracy and MAE on VideoPhy-2's 1-5 scale.

For each record of a VideoPhy-2 split folder (`prepare videophy2`'s layout), the model gets the scoring
conversation it was trained on (the system prompt and question of the run's data config; the defaults of
`data/vlm_dataset.py` for an exported folder) with an open assistant turn, and its answer is the score whose
digit token ("1" .. "5") has the highest next-token logit: a constrained greedy decode, so every answer is a valid
score. Reported: accuracy (answer == label), MAE (mean |answer - label|), the mean of the expected score under the
softmax over the five digits, a 5x5 confusion matrix, and every record that could not be scored with its reason.

The model is a run folder / `iter_*` checkpoint (rebuilt from its `config.yaml`) or a folder `convert export-hf`
wrote (loaded with `transformers`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

SCORES = (1, 2, 3, 4, 5)


class ScoringError(ValueError):
    """The model or data cannot be scored (the message says what to pass)."""


@dataclass
class ScoreReport:
    model: str
    data: str
    label: str
    count: int = 0
    accuracy: Optional[float] = None
    mae: Optional[float] = None
    expected_score_mae: Optional[float] = None
    confusion: list[list[int]] = field(default_factory=lambda: [[0] * 5 for _ in range(5)])  # [label-1][answer-1]
    records: list[dict] = field(default_factory=list)  # {"id", "label", "answer", "expected"}
    skipped: list[str] = field(default_factory=list)


def _run_folder_of(path: Path) -> Optional[Path]:
    for folder in (path, *path.parents[:3]):
        if (folder / "config.yaml").is_file():
            return folder
    return None


def load_scorer(model_path, device: str = "cpu"):
    """(hf model, processor, data config) for a run/iter folder or an exported transformers folder."""
    import torch
    import yaml

    from cosmos_nemo.data.vlm_dataset import VLMDataConfig

    path = Path(model_path)
    if not path.exists():
        raise ScoringError(f"{path} not found: pass a Reasoner run folder, one of its checkpoints/iter_* folders, or "
                           "a folder `cosmos-nemo convert export-hf` wrote")
    if (path / "config.json").is_file() and not (path / "config.yaml").is_file():
        from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

        try:
            model = Qwen3VLForConditionalGeneration.from_pretrained(str(path))
            processor = AutoProcessor.from_pretrained(str(path))
        except (OSError, ValueError) as err:
            raise ScoringError(f"{path} is not a Qwen3-VL folder transformers can load: {err}") from None
        return model.to(device).eval(), processor, VLMDataConfig()
    run = _run_folder_of(path)
    if run is None:
        raise ScoringError(f"{path} is neither an exported transformers folder (config.json) nor inside a run folder "
                           "(config.yaml)")
    from cosmos_nemo.checkpoint import dist as dist_ckpt
    from cosmos_nemo.checkpoint.convert import _single_process, _teardown
    from cosmos_nemo.checkpoint.run import read_model_config, resolve_model_folder
    from cosmos_nemo.models.vlm.processor import build_processor

    family, cfg = read_model_config(run)
    if family.name != "vlm":
        raise ScoringError(f"{run} is a {family.name} run; scoring needs a Reasoner (vlm) run")
    folder = resolve_model_folder(str(path))
    if folder is None:
        raise ScoringError(f"{path} has no complete checkpoint")
    fields = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("data") or {}
    data = VLMDataConfig(**{k: v for k, v in fields.items() if k in VLMDataConfig.__dataclass_fields__})
    own = _single_process()
    try:
        chunk = family.build_model(cfg, True, True, torch.float32)
        dist_ckpt.load_model([chunk], folder)
    finally:
        _teardown(own)
    return chunk.hf.to(device).eval(), build_processor(cfg), data


def digit_ids(processor) -> list[int]:
    ids = []
    for s in SCORES:
        enc = processor.tokenizer.encode(str(s), add_special_tokens=False)
        if len(enc) != 1:
            raise ScoringError(f"the tokenizer splits the score {s} into {len(enc)} tokens; scoring reads one digit token")
        ids.append(enc[0])
    return ids


def score_logits(model, inputs: dict, ids: list[int]):
    """The five digit logits (a tensor) of the next token after the conversation's open assistant turn."""
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(**{k: v.to(device) for k, v in inputs.items()}, use_cache=False).logits
    return logits[0, -1, ids].float().cpu()


def evaluate_videophy2(model_path, data_dir, label: Optional[str] = None, limit: Optional[int] = None,
                       device: str = "cpu", progress: bool = True, model_cfg=None) -> ScoreReport:
    import torch
    from tqdm import tqdm

    from cosmos_nemo.data.vlm_dataset import read_videophy2_split, videophy2_conversation
    from cosmos_nemo.models.vlm.config import VLMModelConfig
    from cosmos_nemo.models.vlm.processor import SampleError, load_video, processor_inputs

    model, processor, data = load_scorer(model_path, device)
    if label is not None:
        data.label = label
    data_dir = Path(data_dir)
    if (data_dir / "videophy2_val").is_dir() and not (data_dir / "meta.json").is_file():
        data_dir = data_dir / "videophy2_val"
    records, skipped = read_videophy2_split(data_dir, data.label)
    if limit is not None:
        records = records[:limit]
    if not records:
        raise ScoringError(f"{data_dir}: no record to score" + (f" ({'; '.join(skipped[:3])})" if skipped else ""))
    if model_cfg is None:
        model_cfg = _video_settings(model_path) or VLMModelConfig()
    ids = digit_ids(processor)
    report = ScoreReport(model=str(model_path), data=str(data_dir), label=data.label, skipped=list(skipped))
    for record in tqdm(records, desc="videophy2", unit="video", disable=not progress):
        conv = videophy2_conversation(record, data, with_answer=False)
        try:
            video = load_video(record["video"], model_cfg, processor)
        except SampleError as err:
            report.skipped.append(f"{record['id']}: {err}")
            continue
        inputs = processor_inputs(conv["messages"], [video], [], processor, add_generation_prompt=True)
        logits = score_logits(model, dict(inputs), ids)
        answer = int(logits.argmax()) + 1
        expected = float((torch.softmax(logits, 0) * torch.tensor(SCORES, dtype=torch.float32)).sum())
        truth = int(record[data.label])
        report.records.append({"id": record["id"], "label": truth, "answer": answer, "expected": expected})
        report.confusion[truth - 1][answer - 1] += 1
    n = len(report.records)
    report.count = n
    if n:
        report.accuracy = sum(r["answer"] == r["label"] for r in report.records) / n
        report.mae = sum(abs(r["answer"] - r["label"]) for r in report.records) / n
        report.expected_score_mae = sum(abs(r["expected"] - r["label"]) for r in report.records) / n
    return report


def _video_settings(model_path):
    """The run's model config (frames and pixels per video) when `model_path` is in a run folder."""
    exported = Path(model_path) / "cosmos_nemo.json"
    if exported.is_file():
        from cosmos_nemo.models.vlm.config import VLMModelConfig

        fields = json.loads(exported.read_text()).get("model") or {}
        return VLMModelConfig(**{k: v for k, v in fields.items() if k in VLMModelConfig.__dataclass_fields__})
    run = _run_folder_of(Path(model_path))
    if run is None:
        return None
    from cosmos_nemo.checkpoint.run import read_model_config

    return read_model_config(run)[1]


def format_report(report: ScoreReport) -> str:
    lines = [f"VideoPhy-2 scoring ({report.label}, 1-5) of {report.model} on {report.data}",
             f"  videos scored  {report.count}   skipped {len(report.skipped)}"]
    if report.count:
        lines += [f"  accuracy       {report.accuracy:.4f}",
                  f"  MAE            {report.mae:.4f}",
                  f"  expected-score MAE {report.expected_score_mae:.4f}",
                  "  confusion (rows: label 1-5, columns: answer 1-5)"]
        lines += ["    " + " ".join(f"{c:5d}" for c in row) for row in report.confusion]
    for reason in report.skipped[:5]:
        lines.append(f"  skipped: {reason}")
    if len(report.skipped) > 5:
        lines.append(f"  ... and {len(report.skipped) - 5} more")
    return "\n".join(lines)


def write_report(report: ScoreReport, path) -> Path:
    from cosmos_nemo.io.atomic import atomic_write_text

    return atomic_write_text(path, json.dumps(asdict(report), indent=1) + "\n")
