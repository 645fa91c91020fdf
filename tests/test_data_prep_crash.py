"""Crash windows of `prepare ar-tokens` and `prepare latents`: a SIGKILL at each named point of a run (the
`COSMOS_NEMO_KILL_AT` hook of io/atomic.py: parts, the merge, dataset.json, the state file, the removal
of the parts), then the same command, with or without `--overwrite`, gives the folder an uninterrupted
run gives, byte for byte, with no temporary left. The killed run is a forked child (no re-import of
torch), killed by the hook with SIGKILL: no cleanup code of ours runs."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from pathlib import Path

import pytest

from cosmos_nemo.data_prep.ar_tokens import ARTokensConfig, prepare_ar_tokens
from cosmos_nemo.data_prep.engine import PrepareError
from cosmos_nemo.io import synthetic as syn
from cosmos_nemo.io.atomic import KILL_ENV
from cosmos_nemo.io.video import write_mp4

H, W, FRAMES = 24, 32, 5

AR_POINTS = [
    "write:fingerprint.json",  # making the parts folder
    "write:00000001.tokens",  # a part's ids, before its commit marker
    "write:00000002.json",  # a part's commit marker
    "merge:moved",  # the merge, with the dataset's files half moved in
    "write:dataset.json",
    "write:.prepare.json",  # the state file
    "prepare:recorded",  # after the state file, before the parts are removed
    "remove:.parts",  # the parts renamed aside, not yet deleted
]


def _tree(out: Path) -> dict[str, bytes | None]:
    """Every entry under `out`, hidden ones included: files with their bytes, folders as None."""
    return {p.relative_to(out).as_posix(): (p.read_bytes() if p.is_file() else None) for p in sorted(out.rglob("*"))}


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    for i in range(3):
        write_mp4(root / f"v{i}.mp4", syn.pattern_frames(10, H, W, seed=i), fps=10)
    (root / "v3.mp4").write_bytes(b"")  # skipped with a reason: the report is part of the output
    return root


def _cfg(videos: Path, out: Path, **kw) -> ARTokensConfig:
    base = dict(input_videos_dir=videos, output_prefix=out, encoder_path="tiny", width=W, height=H,
                num_context_frames=FRAMES, progress=False, decode_threads=1, device="cpu", dtype="float32")
    base.update(kw)
    return ARTokensConfig(**base)


def _killed_child(point: str, run, *args) -> None:
    os.environ[KILL_ENV] = point
    run(*args)
    os._exit(3)  # the point was never reached


_CTX = None


def kill_at(point: str, run, *args) -> None:
    """Run `run(*args)` in a child that SIGKILLs itself at `point`; fail unless it died there."""
    global _CTX
    if _CTX is None:
        _CTX = mp.get_context("forkserver")
        _CTX.set_forkserver_preload(["torch", "cosmos_nemo.data_prep.ar_tokens", "cosmos_nemo.data_prep.latents"])
    proc = _CTX.Process(target=_killed_child, args=(point, run, *args))
    proc.start()
    proc.join(120)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
    assert proc.exitcode == -signal.SIGKILL, f"{point}: the child ended with {proc.exitcode}, not at the kill point"


@pytest.fixture(scope="module")
def reference(videos, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ref") / "ds"
    prepare_ar_tokens(_cfg(videos, out))
    tree = _tree(out)
    assert ".prepare.json" in tree and not any(name.startswith(".parts") for name in tree)
    return tree


@pytest.mark.parametrize("point", AR_POINTS)
def test_ar_tokens_kill_then_rerun(point, videos, reference, tmp_path):
    for overwrite in (False, True):
        out = tmp_path / f"ds-{overwrite}"
        kill_at(point, prepare_ar_tokens, _cfg(videos, out))
        assert out.is_dir() and _tree(out) != reference, "the kill left an unfinished folder"
        prepare_ar_tokens(_cfg(videos, out, overwrite=overwrite))
        assert _tree(out) == reference, (point, overwrite)


@pytest.mark.medium
def test_ar_tokens_killed_overwrite_keeps_or_replaces(videos, reference, tmp_path):
    """A complete dataset, then a run with other settings and `--overwrite` killed before its merge: the
    old command still finds its dataset complete; the killed command, rerun without `--overwrite`,
    continues what it began (it passed the checks once)."""
    out = tmp_path / "ds"
    prepare_ar_tokens(_cfg(videos, out))
    for point in ("write:00000001.tokens", "merge:moved"):
        kill_at(point, prepare_ar_tokens, _cfg(videos, out, stride=2, overwrite=True))
        prepare_ar_tokens(_cfg(videos, out, stride=2))
        other = _tree(out)
        assert other != reference and not any(name.startswith(".parts") for name in other)
        kill_at("write:00000001.tokens", prepare_ar_tokens, _cfg(videos, out, overwrite=True))
        report = prepare_ar_tokens(_cfg(videos, out))  # not recorded any more: its parts say it is ours
        assert not report.already_complete and _tree(out) == reference
    # Killed before its merge, the old dataset is still the recorded one: a rerun of the old command is a no-op.
    kill_at("write:00000001.tokens", prepare_ar_tokens, _cfg(videos, out, stride=2, overwrite=True))
    report = prepare_ar_tokens(_cfg(videos, out))
    assert report.already_complete and _tree(out) == reference
    with pytest.raises(PrepareError, match="already holds a different dataset"):
        prepare_ar_tokens(_cfg(videos, out, stride=3))


def test_foreign_temporary_is_still_foreign(videos, tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / ".holiday.jpg").write_bytes(b"x")
    with pytest.raises(PrepareError, match=r"already holds other files \(\.holiday\.jpg\)"):
        prepare_ar_tokens(_cfg(videos, out))


# ------------------------------------------------------------------------------------------------------
# prepare latents: the same engine (parts, merge, state file) and its own writer; the text embeddings are
# read from a text-embeddings file, so no run loads a text encoder

LATENT_POINTS = ["write:00000001.latents", "merge:moved", "write:.prepare.json", "remove:.parts"]


@pytest.fixture(scope="module")
def latent_inputs(tmp_path_factory) -> tuple[Path, Path]:
    from cosmos_nemo.tokenizers import load_video_tokenizer

    root = tmp_path_factory.mktemp("dit") / "ds"
    (root / "metas").mkdir(parents=True)
    for i in range(3):
        write_mp4(root / "videos" / f"c{i}.mp4", syn.pattern_frames(10, 24, 40, seed=i), fps=10)
        (root / "metas" / f"c{i}.txt").write_text(f"caption {i % 2}\n")
    vae = tmp_path_factory.mktemp("tiny_cv")
    load_video_tokenizer("tiny-cv").save(vae)
    import torch

    torch.save((torch.zeros(16 * 3), torch.ones(16 * 3)), vae / "mean_std.pt")
    from cosmos_nemo.data_prep.text_embeddings import TextTable

    # The file `prepare text-embeddings` writes, with fixed rows instead of an encoder's.
    text = tmp_path_factory.mktemp("text") / "emb.safetensors"
    g = torch.Generator().manual_seed(0)
    TextTable(["caption 0", "caption 1"], torch.randn(2, 8, 16, generator=g).half(), torch.ones(2, 8, dtype=torch.bool),
              "fixed").save(text, sources={"c0": 0, "c1": 1, "c2": 0})
    return root, vae, text


def _latents_cfg(inputs: tuple[Path, Path, Path], out: Path, **kw):
    from cosmos_nemo.data_prep.settings import LatentsConfig

    base = dict(dataset_path=inputs[0], output_dir=out, vae="cosmos-cv", vae_path=str(inputs[1]), num_frames=5,
                video_size=[16, 32], text_source=str(inputs[2]), progress=False, decode_threads=1,
                device="cpu", dtype="float32")
    base.update(kw)
    return LatentsConfig(**base)


@pytest.fixture(scope="module")
def latents_reference(latent_inputs, tmp_path_factory) -> dict:
    from cosmos_nemo.data_prep.latents import prepare_latents

    out = tmp_path_factory.mktemp("lref") / "ds"
    prepare_latents(_latents_cfg(latent_inputs, out))
    return _tree(out)


@pytest.mark.parametrize("point", LATENT_POINTS)
def test_latents_kill_then_rerun(point, latent_inputs, latents_reference, tmp_path):
    from cosmos_nemo.data_prep.latents import prepare_latents

    for overwrite in (False, True):
        out = tmp_path / f"ds-{overwrite}"
        kill_at(point, prepare_latents, _latents_cfg(latent_inputs, out))
        assert out.is_dir() and _tree(out) != latents_reference
        prepare_latents(_latents_cfg(latent_inputs, out, overwrite=overwrite))
        assert _tree(out) == latents_reference, (point, overwrite)


# ------------------------------------------------------------------------------------------------------
# Ctrl-C and a killed parent: one line, exit 130, no worker left, and the same command finishes the job


def _group_members(pgid: int) -> list[int]:
    """Pids of the live processes in process group `pgid` (from /proc; zombies do not count)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(stat.parent.name))
    return out


def _wait_gone(pgid: int, seconds: float = 20.0) -> list[int]:
    import time

    deadline = time.time() + seconds
    while time.time() < deadline and _group_members(pgid):
        time.sleep(0.1)
    return _group_members(pgid)


@pytest.fixture(scope="module")
def many_videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("many")
    for i in range(16):
        write_mp4(root / f"v{i:02d}.mp4", syn.pattern_frames(30, H, W, seed=i), fps=10)
    return root


def _start_cli(videos: Path, out: Path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "cosmos_nemo", "prepare", "ar-tokens", "--input_videos_dir", str(videos),
           "--output_prefix", str(out), "--encoder_path", "tiny", "--width", str(W), "--height", str(H),
           "--num_context_frames", str(FRAMES), "--no-progress", "--decode-threads", "1", "--workers", "2",
           "--device", "cpu", "--dtype", "float32"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for_parts(proc, out: Path, count: int) -> None:
    import time

    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(list((out / ".parts").glob("0*.json"))) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"no {count} parts before the run ended: {proc.communicate()}")


@pytest.mark.medium
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_ctrl_c_in_prepare(many_videos, tmp_path):
    ref = tmp_path / "ref"
    prepare_ar_tokens(_cfg(many_videos, ref))
    reference = _tree(ref)

    out = tmp_path / "ds"
    proc = _start_cli(many_videos, out)
    _wait_for_parts(proc, out, 2)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stderr and "Error" not in stderr, stderr
    assert [line for line in stderr.splitlines() if line.strip()] == [
        "interrupted: cosmos-nemo prepare stopped; the same command resumes or redoes what was not finished"]
    assert _wait_gone(proc.pid) == [], "workers left running"
    assert not (out / "dataset.json").exists()
    report = prepare_ar_tokens(_cfg(many_videos, out))
    assert report.resumed_parts >= 2 and _tree(out) == reference


@pytest.mark.medium
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_parent_killed_workers_end_quietly(many_videos, tmp_path):
    out = tmp_path / "ds"
    proc = _start_cli(many_videos, out)
    _wait_for_parts(proc, out, 2)
    workers = [pid for pid in _group_members(proc.pid) if pid != proc.pid]
    assert workers, "a pool of 2 workers"
    os.kill(proc.pid, signal.SIGKILL)  # the parent only
    _, stderr = proc.communicate(timeout=60)
    assert _wait_gone(proc.pid) == [], "workers outlived their parent"
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
    prepare_ar_tokens(_cfg(many_videos, out))
    assert (out / "dataset.json").is_file() and not (out / ".parts").exists()


def test_keyboard_interrupt_in_any_command_is_one_line(monkeypatch, capsys):
    """Every command (generate, prepare, ...) runs under `cli.main`'s handler: a KeyboardInterrupt out of
    a command is one line and exit status 130."""
    from cosmos_nemo import cli
    from cosmos_nemo.data_prep import commands

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "_run_prompts", interrupted)
    assert cli.main(["prepare", "prompts", "--dataset_path", "x", "--prompt", "y"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "interrupted: cosmos-nemo prepare stopped; the same command resumes or redoes what was not finished"


# ------------------------------------------------------------------------------------------------------
# prepare text-embeddings: its own output file, record and parts beside it

TEXT_POINTS = ["write:text-00000.safetensors", "write:text_embeddings.safetensors",
               "write:.text_embeddings.safetensors.prepare.json", "remove:.text_embeddings.safetensors.parts"]


@pytest.fixture(scope="module")
def text_inputs(tmp_path_factory, tiny_byt5_encoder) -> tuple[Path, Path]:
    t5 = tiny_byt5_encoder
    root = tmp_path_factory.mktemp("captions")
    (root / "metas").mkdir()
    for i in range(3):
        (root / "metas" / f"c{i}.txt").write_text(f"caption number {i}\n")
    return root, t5


def _text_run(root: Path, t5: Path, out: Path, overwrite: bool = False):
    from cosmos_nemo.data_prep.settings import TextEmbeddingsConfig
    from cosmos_nemo.data_prep.text_embeddings import prepare_text_embeddings

    return prepare_text_embeddings(TextEmbeddingsConfig(
        dataset_path=root, output=out, text_encoder=str(t5), prompt_length=8, text_batch_size=2, progress=False,
        device="cpu", dtype="float32", overwrite=overwrite))


@pytest.fixture(scope="module")
def text_reference(text_inputs, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("text_ref")
    _text_run(*text_inputs, out / "text_embeddings.safetensors")
    reference = _tree(out)
    assert sorted(reference) == [".text_embeddings.safetensors.prepare.json", "text_embeddings.safetensors"]
    return reference


@pytest.mark.medium
@pytest.mark.parametrize("point", TEXT_POINTS)
def test_text_embeddings_kill_then_rerun(point, text_inputs, text_reference, tmp_path):
    root, t5 = text_inputs
    reference = text_reference
    for overwrite in [TEXT_POINTS.index(point) % 2 == 1]:  # each point once; the two rerun kinds alternate
        out = tmp_path / f"o-{overwrite}" / "text_embeddings.safetensors"
        kill_at(point, _text_run, root, t5, out)
        assert _tree(out.parent) != reference
        _text_run(root, t5, out, overwrite=overwrite)
        assert _tree(out.parent) == reference, (point, overwrite)
