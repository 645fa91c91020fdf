"""Dependency rules: requirements.txt holds what the library imports; test-only packages live in
requirements-dev.txt and pyproject's `dev` extra, and nothing there may pull torch (which could replace the
CPU build with a CUDA one)."""

from __future__ import annotations

import importlib.metadata as md
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
TORCH = {"torch", "torchvision", "torchaudio"}
# Requirements the package needs without importing them by that name.
NOT_IMPORTED = {
    "leptonai": "pinned so that nemo-run imports (platform notes)",
    "psutil": "megatron's dist_checkpointing async writer needs it",
    "tensorboard": "torch.utils.tensorboard needs it",
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(path: Path) -> list[Requirement]:
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out.append(Requirement(line))
    return out


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_dev_extra_matches_requirements_dev():
    extra = {_norm(Requirement(r).name): str(Requirement(r).specifier) for r in _pyproject()["project"]["optional-dependencies"]["dev"]}
    dev = {_norm(r.name): str(r.specifier) for r in _requirements(ROOT / "requirements-dev.txt")}
    assert extra == dev


def _reaches(name: str, seen: set[str]) -> list[str] | None:
    """A chain of installed requirements from `name` to a torch package, or None."""
    key = _norm(name)
    if key in TORCH:
        return [key]
    if key in seen:
        return None
    seen.add(key)
    try:
        requires = md.requires(name) or []
    except md.PackageNotFoundError:
        pytest.fail(f"{name} is not installed: run `bash scripts/setup.sh --dev`")
    for spec in requires:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        chain = _reaches(req.name, seen)
        if chain:
            return [key] + chain
    return None


def test_no_dev_dependency_pulls_torch():
    for req in _requirements(ROOT / "requirements-dev.txt"):
        chain = _reaches(req.name, set())
        assert chain is None, (f"{req.name} depends on torch through {' -> '.join(chain)}: installing it could replace "
                               "the CPU torch build; install it with --no-deps in scripts/setup.sh instead")


def test_every_runtime_requirement_is_imported_by_the_library():
    sources = "\n".join(p.read_text() for p in (ROOT / "cosmos_nemo").rglob("*.py"))
    imported = set(re.findall(r"^\s*(?:from|import)\s+([A-Za-z_][A-Za-z0-9_]*)", sources, re.M))
    providers = md.packages_distributions()
    imported_dists = {_norm(d) for module in imported for d in providers.get(module, [])}
    for req in _requirements(ROOT / "requirements.txt"):
        name = _norm(req.name)
        if name in NOT_IMPORTED:
            continue
        assert name in imported_dists, (f"{req.name} is in requirements.txt but cosmos_nemo never imports it: "
                                        "move it to requirements-dev.txt if only tests or benchmarks use it")
    dev_only = {_norm(r.name) for r in _requirements(ROOT / "requirements-dev.txt")}
    assert not dev_only & {_norm(r.name) for r in _requirements(ROOT / "requirements.txt")}
