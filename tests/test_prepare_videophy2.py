"""`cosmos-nemo prepare videophy2`: downloaded copies of VideoPhy-2 -> videophy2_{train,val}/{meta.json, media/, text/}.

The downloaded folders are fakes of what `hf download --repo-type dataset videophysics/videophy2_{train,test}` writes:
data files (csv / jsonl) beside a videos/ folder of real small mp4s, plus the hidden .cache/ a download leaves.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cosmos_nemo.cli import main as cli_main
from cosmos_nemo.data_prep import videophy2
from cosmos_nemo.data_prep.videophy2 import VideoPhy2Error, prepare_videophy2

ROOT = Path(__file__).resolve().parents[1]
HF = "https://huggingface.co/datasets/videophysics/videophy2_train/resolve/main/videos/"
COLUMNS = ["video_url", "caption", "sa", "pc", "joint", "model_name", "action", "category", "is_hard"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    """Three real, distinct, small mp4s."""
    from cosmos_nemo.data_prep.sample_data import generate_sample_dataset

    out = tmp_path_factory.mktemp("clips")
    return generate_sample_dataset(out, num_videos=3, num_frames=4, height=32, width=32)


def _download(root: Path, clips: list[Path], names: list[str], rows: list[dict], fmt: str = "csv",
              data_name: str = "videophy2") -> Path:
    """A fake downloaded dataset folder: videos/<names[i]> = clips[i], data/<data_name>.<fmt>, .cache/ noise."""
    (root / "videos").mkdir(parents=True)
    for clip, name in zip(clips, names):
        shutil.copyfile(clip, root / "videos" / name)
    (root / "data").mkdir()
    (root / ".cache" / "huggingface").mkdir(parents=True)
    (root / ".cache" / "huggingface" / "junk.json").write_text("{}")
    (root / "README.md").write_text("# VideoPhy-2\n")
    path = root / "data" / f"{data_name}.{fmt}"
    if fmt == "csv":
        columns = list(dict.fromkeys(k for r in rows for k in r))
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            w.writerows(rows)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return root


def _row(name: str, caption: str, pc, sa=4, **extra) -> dict:
    row = {"video_url": HF + name, "caption": caption, "sa": sa, "pc": pc, "joint": 1, "model_name": "wan2.1",
           "action": "pouring", "category": "fluid", "is_hard": False}
    row.update(extra)
    return row


def _meta(split_dir: Path) -> list[dict]:
    return json.loads((split_dir / "meta.json").read_text(encoding="utf-8"))


def test_train_split_layout_and_records(tmp_path, clips):
    rows = [
        _row("a.mp4", "  A cup of water is poured into a glass.\n", 4, sa=5),
        _row("b.mp4", "Un ballon rebondit — très haut", "3", sa=2, joint=0, model_name="cosmos", is_hard=True),
        _row("a.mp4", "The same video, another prompt", 2, sa=""),  # repeated video: id a-1; no sa
    ]
    down = _download(tmp_path / "dl", clips, ["a.mp4", "b.mp4"], rows)
    out = tmp_path / "out"
    report = prepare_videophy2(out, train_dir=down, split="train", progress=False)

    split = out / "videophy2_train"
    assert sorted(p.name for p in out.iterdir()) == ["videophy2_train"]  # no val, no temporaries left
    assert sorted(p.name for p in split.iterdir()) == ["media", "meta.json", "text"]
    expected = [
        {"id": "a", "video": "media/a.mp4", "text": "text/a.txt", "caption": "A cup of water is poured into a glass.",
         "pc": 4, "sa": 5, "source": HF + "a.mp4", "joint": 1, "model_name": "wan2.1", "action": "pouring",
         "category": "fluid", "is_hard": False},
        {"id": "b", "video": "media/b.mp4", "text": "text/b.txt", "caption": "Un ballon rebondit — très haut",
         "pc": 3, "sa": 2, "source": HF + "b.mp4", "joint": 0, "model_name": "cosmos", "action": "pouring",
         "category": "fluid", "is_hard": True},
        {"id": "a-1", "video": "media/a-1.mp4", "text": "text/a-1.txt", "caption": "The same video, another prompt",
         "pc": 2, "source": HF + "a.mp4", "joint": 1, "model_name": "wan2.1", "action": "pouring",
         "category": "fluid", "is_hard": False},
    ]
    meta = _meta(split)
    assert meta == expected
    assert all(type(r["pc"]) is int for r in meta) and all(type(r["sa"]) is int for r in meta if "sa" in r)
    assert sorted(p.name for p in (split / "media").iterdir()) == ["a-1.mp4", "a.mp4", "b.mp4"]
    for r in meta:
        assert (split / r["text"]).read_bytes() == r["caption"].encode("utf-8")  # UTF-8, no trailing newline
        src = down / "videos" / r["source"].rsplit("/", 1)[1]
        assert (split / r["video"]).read_bytes() == src.read_bytes()
    info = report["splits"]["train"]
    assert (info["rows"], info["kept"], info["skipped"]) == (3, 3, [])
    assert info["linked"] + info["copied"] == 3
    assert info["data_files"] == [str(down / "data" / "videophy2.csv")]


def test_both_splits_through_the_cli(tmp_path, clips):
    """`python -m cosmos_nemo prepare videophy2 --split both`: train from csv + basename search, the test split
    (jsonl, with a local relative video_url and a list column) written as videophy2_val."""
    train = _download(tmp_path / "train", clips, ["t0.mp4", "t1.mp4"],
                      [_row("t0.mp4", "train caption 0", 5), _row("t1.mp4", "train caption 1", 1)])
    test = _download(tmp_path / "test", clips[2:], ["v0.mp4"],
                     [{"video_url": "../videos/v0.mp4", "caption": "val caption", "pc": 3, "sa": 4,
                       "physics_rules_followed": ["gravity"], "id": 17}], fmt="jsonl")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "cosmos_nemo", "prepare", "videophy2", "--out-root", str(out), "--split", "both",
         "--train_dir", str(train), "--test-dir", str(test), "--no-progress"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "videophy2_train: 2 rows, 2 kept, 0 skipped" in proc.stdout
    assert "videophy2_val: 1 rows, 1 kept, 0 skipped" in proc.stdout
    assert "columns not kept (not scalar): physics_rules_followed" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["videophy2_train", "videophy2_val"]
    assert [r["id"] for r in _meta(out / "videophy2_train")] == ["t0", "t1"]
    assert [r["pc"] for r in _meta(out / "videophy2_train")] == [5, 1]
    assert _meta(out / "videophy2_val") == [
        {"id": "v0", "video": "media/v0.mp4", "text": "text/v0.txt", "caption": "val caption", "pc": 3, "sa": 4,
         "source": "../videos/v0.mp4", "hf_id": 17},
    ]
    assert (out / "videophy2_val" / "media" / "v0.mp4").read_bytes() == clips[2].read_bytes()
    assert (out / "videophy2_val" / "text" / "v0.txt").read_text(encoding="utf-8") == "val caption"


def test_videos_elsewhere_copy_fallback_and_limit(tmp_path, clips, monkeypatch):
    down = _download(tmp_path / "dl", [], [], [_row(f"c{i}.mp4", f"caption {i}", 3) for i in range(3)])
    videos = tmp_path / "mp4s" / "nested"
    videos.mkdir(parents=True)
    for i, clip in enumerate(clips):
        shutil.copyfile(clip, videos / f"c{i}.mp4")

    def no_link(src, dst):  # another file system: the videos are copied
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(videophy2.os, "link", no_link)
    out = tmp_path / "out"
    report = prepare_videophy2(out, train_dir=down, videos_dir=tmp_path / "mp4s", split="train", limit=2,
                               progress=False)
    assert [r["id"] for r in _meta(out / "videophy2_train")] == ["c0", "c1"]
    assert (report["splits"]["train"]["copied"], report["splits"]["train"]["linked"]) == (2, 0)
    for i in range(2):
        assert (out / "videophy2_train" / "media" / f"c{i}.mp4").read_bytes() == clips[i].read_bytes()


def test_bad_rows_are_skipped_with_reasons(tmp_path, clips, capsys):
    rows = [
        _row("good.mp4", "a good row", 4),
        _row("missing.mp4", "its video is not there", 4),
        _row("corrupt.mp4", "its video is random bytes", 4),
        _row("cut.mp4", "its video is cut short", 4),
        _row("good.mp4", "pc out of range", 7),
        _row("good.mp4", "   ", 4),
        _row("good.mp4", "pc not an integer", 2.5),
        _row("good.mp4", "sa out of range", 3, sa=9),
    ]
    down = _download(tmp_path / "dl", clips[:1], ["good.mp4"], rows, fmt="jsonl")
    (down / "videos" / "corrupt.mp4").write_bytes(os.urandom(4096))
    data = clips[1].read_bytes()
    (down / "videos" / "cut.mp4").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    rc = cli_main(["prepare", "videophy2", "--out_root", str(out), "--split", "train", "--train-dir", str(down),
                   "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert [r["caption"] for r in _meta(out / "videophy2_train")] == ["a good row"]
    assert "videophy2_train: 8 rows, 1 kept, 7 skipped" in text
    assert "... and 2 more" in text  # the first 5 reasons are shown
    assert text.count("  - data/videophy2.jsonl row ") == 5

    report = prepare_videophy2(out, train_dir=down, split="train", overwrite=True, progress=False)
    reasons = {s["line"]: s["reason"] for s in report["splits"]["train"]["skipped"]}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7, 8]
    assert "video file missing.mp4 not found under" in reasons[2]
    assert reasons[3].startswith("video does not decode")
    assert reasons[4].startswith("video does not decode") and "truncated" in reasons[4]
    assert reasons[5] == "pc 7 is not an integer 1-5"
    assert reasons[6] == "empty caption"
    assert reasons[7] == "pc 2.5 is not an integer 1-5"
    assert reasons[8] == "sa 9 is not an integer 1-5"


def test_missing_column_is_an_error_naming_file_and_columns(tmp_path, clips, capsys):
    down = _download(tmp_path / "dl", clips[:1], ["a.mp4"], [{"video_url": HF + "a.mp4", "caption": "x", "sa": 3}])
    out = tmp_path / "out"
    rc = cli_main(["prepare", "videophy2", "--out_root", str(out), "--split", "train", "--train-dir", str(down),
                   "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 2
    assert "data/videophy2.csv: missing column(s) pc (columns found: video_url, caption, sa)" in text
    assert "Traceback" not in text
    assert not out.exists() or not any(out.iterdir())


def test_existing_output_needs_overwrite(tmp_path, clips, capsys):
    down = _download(tmp_path / "dl", clips[:1], ["a.mp4"], [_row("a.mp4", "new caption", 5)])
    out = tmp_path / "out"
    old = out / "videophy2_train"
    old.mkdir(parents=True)
    (old / "meta.json").write_text("[]")
    (old / "stale.txt").write_text("old")
    args = ["prepare", "videophy2", "--out_root", str(out), "--split", "train", "--train-dir", str(down),
            "--no-progress"]
    assert cli_main(args) == 2
    assert "pass --overwrite" in capsys.readouterr().out
    assert sorted(p.name for p in old.iterdir()) == ["meta.json", "stale.txt"]  # untouched

    assert cli_main(args + ["--overwrite"]) == 0
    assert sorted(p.name for p in old.iterdir()) == ["media", "meta.json", "text"]
    assert [r["caption"] for r in _meta(old)] == ["new caption"]
    assert sorted(p.name for p in out.iterdir()) == ["videophy2_train"]


def test_a_split_that_keeps_nothing_fails_and_writes_nothing(tmp_path, clips, capsys):
    train = _download(tmp_path / "train", clips[:1], ["a.mp4"], [_row("a.mp4", "fine", 3)])
    test = _download(tmp_path / "test", [], [], [_row("gone.mp4", "no video", 3), _row("gone2.mp4", "", 3)])
    out = tmp_path / "out"
    rc = cli_main(["prepare", "videophy2", "--out_root", str(out), "--train-dir", str(train), "--test-dir", str(test),
                   "--no-progress"])
    text = capsys.readouterr().out
    assert rc != 0
    assert "videophy2_val: 2 rows, 0 kept, 2 skipped" in text
    assert "videophy2_val: no row kept" in text and "nothing was written" in text
    assert not out.exists() or not any(out.iterdir())  # not even the train split, nor a temporary


def test_a_failure_while_writing_leaves_no_split_folder(tmp_path, clips, monkeypatch):
    down = _download(tmp_path / "dl", clips, ["a.mp4", "b.mp4", "c.mp4"],
                     [_row(n, f"caption {n}", 3) for n in ("a.mp4", "b.mp4", "c.mp4")])
    real = videophy2._link_or_copy
    calls = []

    def fail_on_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(videophy2, "_link_or_copy", fail_on_second)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="No space left"):
        prepare_videophy2(out, train_dir=down, split="train", progress=False)
    assert not any(out.iterdir())


def test_flag_and_input_errors(tmp_path, clips, capsys):
    assert cli_main(["prepare", "videophy2", "--out_root", str(tmp_path / "o"), "--split", "val"]) == 2
    assert "--split val needs --test-dir" in capsys.readouterr().out
    down = _download(tmp_path / "dl", clips[:1], ["a.mp4"], [_row("a.mp4", "x", 3)])
    (down / "data" / "videophy2.csv").unlink()
    with pytest.raises(VideoPhy2Error, match="no data files"):
        prepare_videophy2(tmp_path / "o", train_dir=down, split="train", progress=False)
    (down / "data" / "train-00000-of-00001.parquet").write_bytes(b"PAR1" + os.urandom(64))
    try:
        import pyarrow  # noqa: F401

        match = "not a readable parquet file"
    except ImportError:
        match = "pip install pyarrow"
    with pytest.raises(VideoPhy2Error, match=match):
        prepare_videophy2(tmp_path / "o", train_dir=down, split="train", progress=False)
    with pytest.raises(VideoPhy2Error, match="--limit must be >= 1"):
        prepare_videophy2(tmp_path / "o", train_dir=down, split="train", limit=0)


def test_help_explains_the_flags_and_the_reference(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["prepare", "videophy2", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--out_root", "--out-root", "--split", "--train-dir", "--train_dir", "--test-dir", "--test_dir",
                 "--videos", "--overwrite", "--limit", "--no-progress"):
        assert flag in text, flag
    assert "cosmos_framework.scripts.vlm.prepare_videophy2_from_hf" in text
    assert "videophysics/videophy2_train" in text and "videophy2_val" in text
