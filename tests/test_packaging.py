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
from packaging.version import Version

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


# --------------------------------------------------------------------------------------------------
# tested ranges: every runtime requirement is bounded on both sides, its lower bound is pinned in
# requirements-min.txt (what the secondary CI stack installs), and the installed stack lies inside them.


def _applies(req: Requirement) -> bool:
    return req.marker is None or req.marker.evaluate({"extra": ""})


def _bounds(req: Requirement) -> tuple[str | None, bool]:
    """(lower bound version, has an upper bound)."""
    lower, upper = None, False
    for spec in req.specifier:
        if spec.operator in (">=", "=="):
            lower = spec.version
        if spec.operator in ("<", "<=", "=="):
            upper = True
    return lower, upper


def test_every_runtime_requirement_has_a_tested_lower_and_an_upper_bound():
    reqs = _requirements(ROOT / "requirements.txt")
    pins = {(_norm(r.name), str(r.marker)): r for r in _requirements(ROOT / "requirements-min.txt")}
    for req in reqs:
        lower, upper = _bounds(req)
        assert lower and upper, f"{req}: give it a tested lower bound (>=) and an upper bound below the next major (<)"
        pin = pins.pop((_norm(req.name), str(req.marker)), None)
        assert pin is not None, f"{req}: requirements-min.txt must pin its lower bound {lower} (same marker)"
        assert str(pin.specifier) == f"=={lower}", f"requirements-min.txt pins {pin}, but the lower bound of {req} is {lower}"
    assert not pins, f"requirements-min.txt pins what requirements.txt does not require: {sorted(pins)}"


def test_installed_stack_is_inside_the_tested_ranges():
    """On either stack, what is installed satisfies requirements.txt; on the minimum stack (`setup.sh --min`,
    COSMOS_NEMO_MIN_STACK=1 in .ci/run) it is exactly the lower bounds."""
    import os

    minimum = os.environ.get("COSMOS_NEMO_MIN_STACK") == "1"
    for req in filter(_applies, _requirements(ROOT / "requirements.txt")):
        installed = md.version(req.name)
        assert req.specifier.contains(installed, prereleases=True), f"{req.name} {installed} is outside {req.specifier}"
        if minimum:
            lower, _ = _bounds(req)
            assert Version(installed).public == Version(lower).public, f"{req.name} {installed}: the minimum stack pins {lower}"
