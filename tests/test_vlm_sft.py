"""The Reasoner (VLM) alignment SFT at tiny size: a random-init Qwen3-VL of `transformers`' own class, trained by the
shared trainer on a VideoPhy-2 layout written by `prepare videophy2` from a fake download.

Checked: the assistant-only label mask token by token (against prefix lengths rendered separately); the loss
against a direct cross-entropy; the loss drops; resume continues exactly; DP=2 equals DP=1; the export loads with
`transformers`; the scoring evaluation equals a direct computation; bad records are reported; LLaVA-OV records."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cosmos_nemo.parallel.launch import run_in_processes

pytestmark = pytest.mark.distributed

STEPS = 8


@pytest.fixture(scope="module")
def processor_ok():
    """Skip where transformers' Qwen3-VL video processor cannot run. Probed in a fresh interpreter, as the training
    processes see it: in a long test session an earlier test's imports can make this process's answer differ
    (seen on the Python 3.11 stack with the CPU torch build and a torchvision without its operators)."""
    import subprocess
    import sys

    probe = ("from cosmos_nemo.models.vlm.processor import torchvision_problem\n"
             "print(torchvision_problem() or '', end='')")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    problem = result.stdout.strip() or (f"probe failed: {result.stderr.strip()[-500:]}" if result.returncode else "")
    if problem:
        pytest.skip(problem)


def _write_download(folder: Path, count: int, seed: int) -> None:
    """A fake `hf download` of a VideoPhy-2 split: data.csv + videos/*.mp4 (the colour says the score)."""
    from cosmos_nemo.io.video import write_mp4

    (folder / "videos").mkdir(parents=True)
    rows = []
    for i in range(count):
        rng = np.random.default_rng(seed + i)
        pc = 1 + (i % 5)
        frames = rng.integers(0, 40, (6, 48, 64, 3), dtype=np.uint8)
        frames[..., pc % 3] += np.uint8(40 * pc)
        write_mp4(folder / "videos" / f"clip{seed}_{i}.mp4", frames, fps=6)
        rows.append({"video_url": f"https://example.org/videos/clip{seed}_{i}.mp4",
                     "caption": f"a ball {'rolls' if pc > 2 else 'hovers'} #{i}", "pc": pc, "sa": 1 + (i * 3) % 5})
    with open(folder / "data.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def videophysics(tmp_path_factory):
    from cosmos_nemo.data_prep.videophy2 import prepare_videophy2

    root = tmp_path_factory.mktemp("videophy2")
    _write_download(root / "dl_train", 8, 0)
    _write_download(root / "dl_test", 4, 100)
    prepare_videophy2(root / "videophysics", train_dir=root / "dl_train", test_dir=root / "dl_test", progress=False)
    return root / "videophysics"


def _model_cfg():
    from cosmos_nemo.models.vlm.config import VLMModelConfig

    return VLMModelConfig(name="tiny", num_frames=4, max_pixels=64 * 64)


def _train(out_root: str, name: str, steps: int, data_root: str, micro: int = 1, global_batch: int = 2):
    torch.set_num_threads(1)
    from cosmos_nemo.data.vlm_dataset import VLMDataConfig
    from cosmos_nemo.training.config import CheckpointConfig, LogConfig, OptimizerConfig, ParallelConfig, TrainerConfig
    from cosmos_nemo.training.trainer import train

    return train(_model_cfg(), VLMDataConfig(paths=[data_root], micro_batch_size=micro, global_batch_size=global_batch),
                 OptimizerConfig(lr=3e-3, schedule="constant", weight_decay=0.0),
                 TrainerConfig(max_steps=steps, val_interval=STEPS, val_batches=2, seed=3),
                 CheckpointConfig(output_root=out_root, name=name, save_interval=4, keep_last=0),
                 ParallelConfig(), LogConfig(progress_bar=False, tensorboard=False))


def _weights(run_dir: str) -> dict:
    torch.set_num_threads(1)
    from cosmos_nemo import parallel
    from cosmos_nemo.inference.loading import load_trained_model

    parallel.setup()
    model, _, _ = load_trained_model(run_dir)
    out = {k: v.detach().clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
    parallel.teardown()
    return out


@pytest.fixture(scope="module")
def reference(videophysics, tmp_path_factory, processor_ok):
    runs = tmp_path_factory.mktemp("runs")
    out = run_in_processes(_train, 1, str(runs), "ref", STEPS, str(videophysics))[0]
    return runs, out


# ---------------------------------------------------------------------------------------------------
# labels and loss


def _conversation():
    return {"messages": [
        {"role": "system", "content": "You judge videos."},
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Score it."}]},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": [{"type": "text", "text": "Why?"}]},
        {"role": "assistant", "content": "The ball falls as it should."}], "videos": [], "images": []}


@pytest.mark.medium
def test_only_assistant_tokens_are_labelled_token_by_token(videophysics, processor_ok):
    from cosmos_nemo.models.vlm.processor import IGNORE, build_processor, encode, load_video, processor_inputs

    cfg = _model_cfg()
    processor = build_processor(cfg)
    conv = _conversation()
    conv["videos"] = [str(videophysics / "videophy2_train" / "media" / "clip0_0.mp4")]
    enc = encode(conv, processor, cfg)
    video = load_video(conv["videos"][0], cfg, processor)
    full = processor_inputs(conv["messages"], [video], [], processor)["input_ids"][0]
    assert torch.equal(enc.input_ids, full)  # labelling does not change the tokens
    # expected: each assistant turn starts where the prefix up to it, with the generation prompt, ends; it covers
    # the tokens of its content and the closing <|im_end|>
    expected = torch.full_like(full, IGNORE)
    im_end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    for k, message in enumerate(conv["messages"]):
        if message["role"] != "assistant":
            continue
        start = processor_inputs(conv["messages"][:k], [video], [], processor, add_generation_prompt=True)["input_ids"].shape[1]
        content = processor.tokenizer.encode(message["content"], add_special_tokens=False) + [im_end]
        assert full[start:start + len(content)].tolist() == content
        expected[start:start + len(content)] = full[start:start + len(content)]
    assert torch.equal(enc.labels, expected)
    assert (enc.labels != IGNORE).sum() == 1 + 1 + len("The ball falls as it should.") + 1  # byte-level tokens
    assert (enc.token_types == 2).sum() == enc.vision["video_grid_thw"].prod() // 4  # merged video tokens


def test_loss_is_cross_entropy_over_assistant_tokens():
    from cosmos_nemo.models.vlm.step import token_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 11, generator=g)
    labels = torch.full((2, 7), -100)
    labels[0, 3:5] = torch.tensor([1, 2])
    labels[1, 6] = 9
    loss, acc, count = token_loss(logits, labels)
    picks = [(0, 2, 1), (0, 3, 2), (1, 5, 9)]  # logits at t predict the label at t + 1
    direct = np.mean([-torch.log_softmax(logits[b, t], -1)[y].item() for b, t, y in picks])
    assert count == 3 and loss.item() == pytest.approx(direct, rel=1e-6)
    assert acc.item() == pytest.approx(np.mean([logits[b, t].argmax().item() == y for b, t, y in picks]))


# ---------------------------------------------------------------------------------------------------
# training


@pytest.mark.medium
def test_sft_lowers_its_loss_and_writes_the_run_folder(reference):
    _, out = reference
    run = Path(out["run_dir"])
    assert out["step"] == STEPS and out["val_loss"] < out["val_loss_first"], out
    assert np.mean(out["losses"][-3:]) < 0.7 * np.mean(out["losses"][:2]), out["losses"]
    for name in ("config.yaml", "launch_info.yaml", "job_env.yaml", "checkpoints/latest_checkpoint.txt"):
        assert (run / name).is_file(), name
    assert (run / "checkpoints" / "iter_000000008" / "model").is_dir()
    assert "family: vlm" in (run / "config.yaml").read_text()
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("train/accuracy" in line for line in lines) and any("val/accuracy" in line for line in lines)


@pytest.mark.slow
def test_resume_continues_exactly(reference, videophysics):
    runs, ref = reference
    first = run_in_processes(_train, 1, str(runs), "resumed", STEPS // 2, str(videophysics))[0]
    second = run_in_processes(_train, 1, str(runs), "resumed", STEPS, str(videophysics))[0]
    assert first["losses"] + second["losses"] == ref["losses"]
    a, b = run_in_processes(_weights, 1, ref["run_dir"])[0], run_in_processes(_weights, 1, second["run_dir"])[0]
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_data_parallel_ranks_equal_one(reference, videophysics):
    runs, ref = reference
    out = run_in_processes(_train, 2, str(runs), "dp2", STEPS, str(videophysics))[0]
    assert len(out["losses"]) == STEPS
    for step, (a, b) in enumerate(zip(out["losses"], ref["losses"])):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5), f"step {step}"
    a, b = run_in_processes(_weights, 1, ref["run_dir"])[0], run_in_processes(_weights, 1, out["run_dir"])[0]
    for key in a:
        assert np.allclose(a[key], b[key], rtol=1e-3, atol=1e-5), key


# ---------------------------------------------------------------------------------------------------
# export and scoring


def _direct_scores(folder: Path, split: Path, cfg) -> tuple[float, float, list[int]]:
    """Accuracy and MAE computed straight from transformers: the exported processor's own chat template and
    processor call, the model's logits of the five digit tokens."""
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration
    from transformers.video_utils import VideoMetadata

    from cosmos_nemo.data.vlm_dataset import VIDEOPHY2_PROMPT, VIDEOPHY2_SYSTEM
    from cosmos_nemo.models.vlm.processor import load_video

    processor = AutoProcessor.from_pretrained(str(folder))
    model = Qwen3VLForConditionalGeneration.from_pretrained(str(folder)).eval()
    digits = [processor.tokenizer.convert_tokens_to_ids(str(d)) for d in range(1, 6)]
    answers, labels = [], []
    for record in json.loads((split / "meta.json").read_text()):
        frames, meta = load_video(split / record["video"], cfg, processor)
        messages = [{"role": "system", "content": VIDEOPHY2_SYSTEM},
                    {"role": "user", "content": [{"type": "video"},
                                                 {"type": "text", "text": VIDEOPHY2_PROMPT.format(caption=record["caption"])}]}]
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = processor(text=[text], videos=[frames], return_tensors="pt",
                           videos_kwargs=dict(video_metadata=[VideoMetadata(**meta)], do_sample_frames=False,
                                              do_resize=False))
        with torch.no_grad():
            logits = model(**inputs).logits[0, -1]
        answers.append(1 + int(np.argmax([logits[d].item() for d in digits])))
        labels.append(record["pc"])
    answers, labels = np.array(answers), np.array(labels)
    return float((answers == labels).mean()), float(np.abs(answers - labels).mean()), answers.tolist()


def test_export_loads_in_transformers_and_scoring_equals_a_direct_computation(reference, videophysics, tmp_path):
    from cosmos_nemo.checkpoint.hf_commands import export_hf
    from cosmos_nemo.eval.videophy2 import evaluate_videophy2

    _, out = reference
    run = Path(out["run_dir"])
    folder = export_hf(run / "checkpoints" / "iter_000000008", run / "config.yaml", tmp_path / "model", verify=True,
                       log=lambda *_: None)
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    split = videophysics / "videophy2_val"
    accuracy, mae, answers = _direct_scores(folder, split, _model_cfg())
    for source in (folder, run):  # the exported folder, and the run folder's own checkpoint
        report = evaluate_videophy2(source, videophysics, progress=False)
        assert report.count == 4 and report.data == str(split)
        assert [r["answer"] for r in report.records] == answers
        assert report.accuracy == pytest.approx(accuracy) and report.mae == pytest.approx(mae)
        assert sum(map(sum, report.confusion)) == 4


@pytest.mark.medium
def test_evaluate_cli_writes_the_report(reference, videophysics, tmp_path):
    import subprocess
    import sys

    _, out = reference
    result = subprocess.run([sys.executable, "-m", "cosmos_nemo", "evaluate", "videophy2", "--model", out["run_dir"],
                             "--data", str(videophysics / "videophy2_val"), "-o", str(tmp_path / "r.json"),
                             "--no-progress"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "accuracy" in result.stdout and "MAE" in result.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["count"] == 4 and len(report["records"]) == 4
    bad = subprocess.run([sys.executable, "-m", "cosmos_nemo", "evaluate", "videophy2", "--model",
                          str(tmp_path / "nope"), "--data", str(videophysics)], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "not found" in bad.stderr and "Traceback" not in bad.stderr


# ---------------------------------------------------------------------------------------------------
# data


def test_bad_records_are_reported_and_no_records_is_an_error(videophysics, tmp_path):
    import shutil

    from cosmos_nemo.data.vlm_dataset import DataError, VLMDataConfig, load_records

    split = tmp_path / "videophy2_train"
    shutil.copytree(videophysics / "videophy2_train", split)
    rows = json.loads((split / "meta.json").read_text())
    rows[0]["pc"] = 7
    rows[1]["video"] = "media/missing.mp4"
    rows[2]["video"] = "../../etc/passwd"
    (split / "meta.json").write_text(json.dumps(rows))
    train, valid, notes = load_records(VLMDataConfig(paths=[str(tmp_path)]))
    assert len(train) == len(rows) - 3 and valid == []
    text = " ".join(notes)
    assert "skipped 3 records" in text and "pc=7" in text and "not found" in text
    (split / "meta.json").write_text(json.dumps(rows[:3]))
    with pytest.raises(DataError, match="no usable training record"):
        load_records(VLMDataConfig(paths=[str(tmp_path)]))
    with pytest.raises(DataError, match="prepare videophy2"):
        load_records(VLMDataConfig(paths=[str(tmp_path / "empty")]))


def test_llava_ov_records_become_conversations(tmp_path, processor_ok):
    from PIL import Image

    from cosmos_nemo.data.vlm_dataset import VLMDataConfig, load_records
    from cosmos_nemo.models.vlm.processor import IGNORE, build_processor, encode

    Image.fromarray(np.full((40, 56, 3), 120, np.uint8)).save(tmp_path / "a.png")
    records = [
        {"id": "r0", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nWhat colour?"},
                                                          {"from": "gpt", "value": "Grey."}]},
        {"id": "r1", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."},
                                       {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Bye."}]},
        {"id": "r2", "conversations": [{"from": "human", "value": "no answer"}]},
        {"id": "r3", "image": "missing.png", "conversations": [{"from": "human", "value": "<image>"},
                                                                {"from": "gpt", "value": "x"}]},
    ]
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    train, _, notes = load_records(VLMDataConfig(kind="llava_ov", paths=[str(tmp_path / "records.jsonl")]))
    assert [r["id"] for r in train] == ["r0", "r1"] and "skipped 2 records" in notes[-1]
    assert train[0]["messages"][0]["content"][0] == {"type": "image"}
    cfg = _model_cfg()
    processor = build_processor(cfg)
    first = encode(train[0], processor, cfg)
    assert "pixel_values" in first.vision and first.vision["image_grid_thw"].tolist() == [[1, 4, 4]]  # 40x56 -> 64x64 px, 16-px patches
    labelled = processor.tokenizer.decode(first.input_ids[first.labels != IGNORE])
    assert labelled == "Grey.<|im_end|>"
    second = encode(train[1], processor, cfg)
    assert processor.tokenizer.decode(second.input_ids[second.labels != IGNORE]) == "Hello.<|im_end|>Bye.<|im_end|>"


def test_llava_ov_streamed_from_the_hub_with_decoded_images(monkeypatch, processor_ok):
    """`data.hub_dataset`: records come from `datasets.load_dataset(..., streaming=True)` with PIL images (a stand-in
    module here: no network), and become the same conversations as local records."""
    import sys
    import types

    from PIL import Image

    from cosmos_nemo.data.vlm_dataset import VLMDataConfig, load_records
    from cosmos_nemo.models.vlm.processor import IGNORE, build_processor, encode

    calls = []

    def load_dataset(name, subset, split, streaming):
        calls.append((name, subset, split, streaming))
        image = Image.fromarray(np.full((32, 32, 3), 200, np.uint8))
        return iter([{"id": "h0", "image": image, "conversations": [{"from": "human", "value": "<image>\nWhat is it?"},
                                                                   {"from": "gpt", "value": "A grey square."}]},
                     {"id": "h1", "conversations": [{"from": "human", "value": "only a question"}]}])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    data = VLMDataConfig(kind="llava_ov", hub_dataset="lmms-lab/LLaVA-OneVision-Data", hub_subset="CLEVR")
    train, _, notes = load_records(data)
    assert calls == [("lmms-lab/LLaVA-OneVision-Data", "CLEVR", "train", True)]
    assert [r["id"] for r in train] == ["h0"] and "1 records streamed" in notes[0]
    cfg = _model_cfg()
    processor = build_processor(cfg)
    enc = encode(train[0], processor, cfg)
    assert processor.tokenizer.decode(enc.input_ids[enc.labels != IGNORE]) == "A grey square.<|im_end|>"
    assert enc.vision["image_grid_thw"].tolist() == [[1, 4, 4]]


def test_starts_from_a_transformers_snapshot_strictly(reference, tmp_path):
    """The production path (`name="qwen3_vl"`): architecture and processor from a snapshot folder, weights loaded
    strictly from its safetensors (here the tiny run's export stands in for Qwen/Qwen3-VL-8B-Instruct), also with
    the pre-4.52 key layout of older released Qwen-VL files."""
    from safetensors.torch import load_file, save_file

    from cosmos_nemo.checkpoint.hf_commands import export_hf
    from cosmos_nemo.models.vlm.config import VLMModelConfig
    from cosmos_nemo.models.vlm.family import FAMILY

    _, out = reference
    run = Path(out["run_dir"])
    snapshot = export_hf(run / "checkpoints" / "iter_000000008", run / "config.yaml", tmp_path / "snap",
                         log=lambda *_: None)
    cfg = VLMModelConfig(name="qwen3_vl", model_name=str(snapshot), num_frames=4, max_pixels=64 * 64)
    want = load_file(str(snapshot / "model.safetensors"))
    chunk = FAMILY.build_model(cfg, True, True, torch.float32)
    note = FAMILY.load_released(chunk, cfg, str(snapshot))
    got = chunk.hf.state_dict()
    assert "64 tensors" in note and set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    legacy = {k.replace("model.language_model.", "model.").replace("model.visual.", "visual."): v for k, v in want.items()}
    (tmp_path / "legacy").mkdir()
    save_file(legacy, str(tmp_path / "legacy" / "model.safetensors"))
    fresh = FAMILY.build_model(cfg, True, True, torch.float32)
    FAMILY.load_released(fresh, cfg, str(tmp_path / "legacy"))
    assert all(torch.equal(fresh.hf.state_dict()[k], want[k]) for k in want)
    del legacy["lm_head.weight"]
    (tmp_path / "partial").mkdir()
    save_file(legacy, str(tmp_path / "partial" / "model.safetensors"))
    with pytest.raises(ValueError, match="missing 1 \\['lm_head.weight'\\]"):
        FAMILY.load_released(FAMILY.build_model(cfg, True, True, torch.float32), cfg, str(tmp_path / "partial"))


@pytest.mark.medium
def test_to_dcp_of_a_qwen3_vl_snapshot_then_export_hf_round_trips(reference, tmp_path, capsys):
    """`convert to-dcp` takes a Qwen3-VL snapshot (sharded safetensors + index, config and processor files, as the hub
    holds Qwen/Qwen3-VL-8B-Instruct; here the tiny run's export in that layout) and our own export folder; the
    dist-ckpt folder alone (the snapshot deleted) starts training and exports back, bit for bit (`--verify`)."""
    import shutil

    from safetensors.torch import load_file, save_file

    from cosmos_nemo.checkpoint.hf_commands import export_hf
    from cosmos_nemo.cli import main

    _, out = reference
    run = Path(out["run_dir"])
    ours = export_hf(run / "checkpoints" / "iter_000000008", run / "config.yaml", tmp_path / "ours", log=lambda *_: None)
    want = load_file(str(ours / "model.safetensors"))
    snapshot = tmp_path / "snapshot"  # the hub's layout: no cosmos_nemo.json, weights in two shards + an index
    snapshot.mkdir()
    for f in ours.iterdir():
        if f.name not in ("model.safetensors", "cosmos_nemo.json"):
            shutil.copy2(f, snapshot / f.name)
    keys = sorted(want)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, part in shards.items():
        save_file({k: want[k] for k in part}, str(snapshot / name))
    (snapshot / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: name for name, part in shards.items() for k in part}}))

    def cli(*args):
        capsys.readouterr()
        code = main(["convert", *map(str, args)])
        return code, capsys.readouterr().out

    for source, name in ((snapshot, "qwen3_vl"), (ours, "tiny")):
        dcp = tmp_path / f"dcp_{source.name}"
        code, text = cli("to-dcp", "--checkpoint-path", source, "-o", dcp)
        assert code == 0 and f"({name})" in text, text
        if name == "qwen3_vl":
            assert (dcp / "hf_config" / "config.json").is_file() and (dcp / "hf_config" / "tokenizer.json").is_file()
            assert not list((dcp / "hf_config").glob("*.safetensors*"))
            shutil.rmtree(snapshot)  # the dist-ckpt folder is self-contained
            _check_training_start(dcp, want)
        code, text = cli("export-hf", "--checkpoint-path", dcp, "--config-file", dcp / "config.yaml",
                         "-o", tmp_path / f"back_{name}", "--verify")
        assert code == 0 and "verified" in text, text
        back = load_file(str(tmp_path / f"back_{name}" / "model.safetensors"))
        assert back.keys() == want.keys() and all(torch.equal(back[k], want[k]) for k in want)

    code, text = cli("to-dcp", "--checkpoint-path", ours, "--model", "4b", "-o", tmp_path / "wrong")
    assert code == 2 and "Qwen3-VL" in text and "--model 4b" in text and not (tmp_path / "wrong").exists(), text
    code, text = cli("to-dcp", "--checkpoint-path", tmp_path, "--model", "qwen3_vl", "-o", tmp_path / "wrong")
    assert code == 2 and "is not a Qwen3-VL snapshot" in text and not (tmp_path / "wrong").exists(), text


def _check_training_start(dcp: Path, want: dict) -> None:
    """What `train` does with checkpoint.pretrained=DCP: the model its config.yaml describes, filled from the folder."""
    from cosmos_nemo import parallel
    from cosmos_nemo.checkpoint.hf_commands import read_config_file
    from cosmos_nemo.checkpoint.run import load_pretrained

    family, cfg = read_config_file(dcp / "config.yaml")
    assert cfg.name == "qwen3_vl" and Path(cfg.model_name) == (dcp / "hf_config").resolve()
    parallel.setup()
    try:
        chunk = family.build_model(cfg, True, True, torch.float32)
        assert "dist-ckpt" in load_pretrained([chunk], family, cfg, str(dcp))
        got = chunk.hf.state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want)
    finally:
        parallel.teardown()
