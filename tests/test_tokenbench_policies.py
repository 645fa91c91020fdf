"""`evaluate tokenbench` policies: --max-skipped, cut skip lists, unsearched subfolders, truncated files,
Ctrl-C; and a command line that imports only what the command uses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cosmos_nemo.cli import main
from cosmos_nemo.eval.synthetic import synthetic_frames
from cosmos_nemo.eval.tokenbench import skip_policy_error, summarise
from cosmos_nemo.io.video import write_mp4

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "megatron", "transformers", "nemo_run")


def run(gt: Path, gen: Path, *extra: str) -> int:
    return main(["evaluate", "tokenbench", "--gtpath", str(gt), "--targetpath", str(gen), "--workers", "1", *extra])


def _pair(gt: Path, gen: Path, name: str, frames=None, crf: int = 30) -> None:
    frames = synthetic_frames(3, 16, 20) if frames is None else frames
    write_mp4(gt / name, frames, crf=0)
    write_mp4(gen / name, frames, crf=crf)


def _modules_after(code: str) -> set[str]:
    """Top-level packages imported by `code` run in a fresh interpreter (it must print nothing else)."""
    probe = code + "\nimport sys, json\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_building_the_parser_imports_no_torch_or_megatron():
    loaded = _modules_after("import cosmos_nemo.cli\ncosmos_nemo.cli.build_parser()")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_evaluate_tokenbench_imports_no_megatron_and_no_torch_for_psnr_ssim(tmp_path):
    gt, gen = tmp_path / "gt", tmp_path / "gen"
    _pair(gt, gen, "a.mp4")
    loaded = _modules_after(
        "from cosmos_nemo.cli import main\n"
        f"rc = main(['evaluate', 'tokenbench', '--gtpath', {str(gt)!r}, '--targetpath', {str(gen)!r}, '--workers', '1'])\n"
        "assert rc == 0, rc\n"
    )
    assert (gen / "tokenbench.json").is_file()
    assert "megatron" not in loaded and "torch" not in loaded, sorted(loaded & set(HEAVY))


def _seven_of_eight_bad(tmp_path) -> tuple[Path, Path]:
    gt, gen = tmp_path / "gt", tmp_path / "gen"
    _pair(gt, gen, "good.mp4")
    for i in range(7):
        write_mp4(gt / f"bad{i}.mp4", synthetic_frames(3, 16, 20), crf=0)
        (gen / f"bad{i}.mp4").write_bytes(b"")  # zero-byte: not decodable
    return gt, gen


def test_unscored_pairs_fail_by_default_and_the_report_is_still_written(tmp_path, capsys):
    gt, gen = _seven_of_eight_bad(tmp_path)
    assert run(gt, gen) == 1
    captured = capsys.readouterr()
    assert "7 of 8 pairs were not scored, more than --max-skipped 0 allows" in captured.err
    assert "and 2 more" in captured.err  # five reasons shown, the rest counted
    report = json.loads((gen / "tokenbench.json").read_text())
    assert [v["name"] for v in report["videos"]] == ["good.mp4"]
    assert sorted(s["name"] for s in report["skipped"]) == [f"bad{i}.mp4" for i in range(7)]
    assert report["skip_check"] == {"max_skipped": 0, "skipped": 7, "passed": False}
    assert "skipped 7:" in captured.out  # the printed table names them too
    assert run(gt, gen, "--max-skipped", "6") == 1
    capsys.readouterr()
    assert run(gt, gen, "--max-skipped", "7") == 0
    assert "error" not in capsys.readouterr().err
    assert json.loads((gen / "tokenbench.json").read_text())["skip_check"]["passed"] is True


def test_a_complete_set_passes_with_the_default(tmp_path, capsys):
    gt, gen = tmp_path / "gt", tmp_path / "gen"
    for name in ("a.mp4", "b.mp4"):
        _pair(gt, gen, name)
    assert run(gt, gen) == 0
    assert json.loads((gen / "tokenbench.json").read_text())["skipped"] == []


def test_max_skipped_is_in_help_and_refuses_negative(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "tokenbench", "--help"])
    out = capsys.readouterr().out
    assert "--max-skipped" in out and "Default 0" in out
    with pytest.raises(SystemExit):
        main(["evaluate", "tokenbench", "--gtpath", "a", "--targetpath", "b", "--max-skipped", "-1"])


def test_skip_lists_cut_at_five_say_how_many_more(tmp_path, capsys):
    assert summarise(list("abcde")) == "a; b; c; d; e"
    assert summarise(list("abcdefgh")) == "a; b; c; d; e; and 3 more"
    report = {"videos": [], "skipped": [{"name": f"v{i}.mp4", "reason": "r"} for i in range(9)]}
    assert "and 4 more" in skip_policy_error(report, 0)
    # Nothing scored at all: the error lists five reasons and counts the rest.
    gt, gen = tmp_path / "gt", tmp_path / "gen"
    gen.mkdir()
    for i in range(8):
        write_mp4(gt / f"v{i}.mp4", synthetic_frames(3, 16, 20), crf=0)
        (gen / f"v{i}.mp4").write_bytes(b"\x00not a video" * 4)
    assert run(gt, gen) == 1
    err = capsys.readouterr().err
    assert "no pair could be scored" in err and "and 3 more" in err
    assert err.count("not a readable media file") == 5


def test_unsearched_subfolders_are_pointed_out(tmp_path, capsys):
    gt, gen = tmp_path / "gt", tmp_path / "gen"
    _pair(gt, gen, "a.mp4")
    _pair(gt / "sub", gen / "sub", "b.mp4")
    _pair(gt / "sub" / "deeper", gen / "sub" / "deeper", "c.mp4")
    assert run(gt, gen) == 0  # the top level is complete
    out = capsys.readouterr().out
    assert f"subfolders of --gtpath {gt} hold 2 *.mp4 files that were not searched" in out
    assert "add --recursive" in out
    warnings = json.loads((gen / "tokenbench.json").read_text())["warnings"]
    assert len(warnings) == 2 and all("not searched" in w for w in warnings)
    assert run(gt, gen, "--recursive") == 0
    assert "not searched" not in capsys.readouterr().out
    assert json.loads((gen / "tokenbench.json").read_text())["warnings"] == []
    # Only subfolders hold videos: the no-pairs error says where they are.
    gt2, gen2 = tmp_path / "gt2", tmp_path / "gen2"
    _pair(gt2 / "clips", gen2 / "clips", "a.mp4")
    assert run(gt2, gen2) == 1
    err = capsys.readouterr().err
    assert "no pairs" in err and "subfolders of --gtpath" in err and "--recursive" in err
    # Without videos in subfolders there is nothing to point out.
    gt3, gen3 = tmp_path / "gt3", tmp_path / "gen3"
    _pair(gt3, gen3, "a.mp4")
    (gt3 / "empty_sub").mkdir()
    assert run(gt3, gen3) == 0
    assert "not searched" not in capsys.readouterr().out


@pytest.mark.parametrize("faststart", [True, False])
@pytest.mark.parametrize("keep", [0.5, 0.8, 0.97])
def test_a_truncated_file_is_reported_as_truncated(tmp_path, faststart, keep):
    gt, gen = tmp_path / "gt", tmp_path / "gen"
    frames = synthetic_frames(8, 64, 96, seed=3)
    write_mp4(gt / "a.mp4", frames, crf=0)
    write_mp4(gen / "a.mp4", frames, crf=20, faststart=faststart)
    data = (gen / "a.mp4").read_bytes()
    (gen / "a.mp4").write_bytes(data[: int(len(data) * keep)])
    _pair(gt, gen, "ok.mp4")
    assert run(gt, gen, "--max-skipped", "1") == 0
    (skip,) = json.loads((gen / "tokenbench.json").read_text())["skipped"]
    assert skip["name"] == "a.mp4"
    assert "truncated" in skip["reason"] and "corrupt" not in skip["reason"], skip["reason"]
    assert f"the file is {int(len(data) * keep)} bytes" in skip["reason"]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _group_size(pgid: int) -> int:
    n = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    n += 1
            except (ProcessLookupError, PermissionError):
                pass
    return n


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to list the worker processes")
# (workers, seconds after the worker process appears): 0 hits the worker while it is still starting up.
@pytest.mark.medium
@pytest.mark.parametrize("workers,delay", [(2, 1.0), (2, 0.0), (1, 1.0)])
def test_ctrl_c_prints_one_line_and_leaves_no_worker(tmp_path, workers, delay):
    gt, gen = tmp_path / "gt", tmp_path / "gen"
    gt.mkdir()
    gen.mkdir()
    frames = synthetic_frames(150, 96, 128, seed=1)
    write_mp4(tmp_path / "ref.mp4", frames, crf=0)
    write_mp4(tmp_path / "gen.mp4", frames, crf=30)
    for i in range(12):  # many long pairs from two files: the run lasts well beyond the interrupt
        os.link(tmp_path / "ref.mp4", gt / f"p{i:02d}.mp4")
        os.link(tmp_path / "gen.mp4", gen / f"p{i:02d}.mp4")
    err_file = tmp_path / "stderr.txt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cosmos_nemo", "evaluate", "tokenbench", "--gtpath", str(gt), "--targetpath", str(gen),
         "--workers", str(workers)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=err_file.open("w"), text=True, start_new_session=True,
    )
    pgid = proc.pid
    try:
        deadline = time.monotonic() + 60
        # Interrupt once scoring has begun (the progress bar is up) and, at 2 workers, the worker process
        # has appeared beside this one (which scores too); then `delay` seconds later.
        while time.monotonic() < deadline and proc.poll() is None:
            if "tokenbench pairs" in err_file.read_text() and _group_size(pgid) >= workers:
                break
            time.sleep(0.05)
        time.sleep(delay)
        assert proc.poll() is None, "the run ended before the interrupt; make the pairs longer"
        os.killpg(pgid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        proc.communicate(timeout=60)
        err = err_file.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(pgid, signal.SIGKILL)
    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "tokenbench pairs" not in line]
    assert lines == ["interrupted: evaluate tokenbench stopped, no report written"], lines
    assert not (gen / "tokenbench.json").exists()
    deadline = time.monotonic() + 10
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _group_alive(pgid), "worker processes outlived the command"
