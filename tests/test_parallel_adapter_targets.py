"""The CPU adapter's targets: every megatron-core name it redirects is in place in the installed release
(CI runs this on both stacks, megatron-core 0.16.1 and 0.19.x), and one that moved fails loudly, at import
and at install, instead of a redirect silently landing on a name nobody reads."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cosmos_nemo.parallel import cpu_adapter


def _run(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "default", **(env or {})})


def test_every_target_is_in_place_in_the_installed_megatron():
    assert cpu_adapter.check_targets() == []
    # Both checks agree on the installed release: the parsed sources and the imported modules.
    assert cpu_adapter._loaded_problems() == []


def test_targets_cover_every_module_the_adapter_patches():
    source = Path(cpu_adapter.__file__).read_text()
    install_body = source[source.index("def install("):source.index("def is_installed(")]
    listed = {(t.module, t.name) for t in cpu_adapter.TARGETS}
    for module in cpu_adapter._CUDA_LITERAL_MODULES:
        assert (module, "torch") in listed
    # each `mp_random.X = ...` / `optimizer.X = ...` / `clip_grads.X = ...` in install() has its target
    aliases = {"mp_random": "megatron.core.tensor_parallel.random", "optimizer": "megatron.core.optimizer.optimizer",
               "clip_grads": "megatron.core.optimizer.clip_grads"}
    patched = re.findall(r"^\s*(mp_random|optimizer|clip_grads)\.(\w+)\s*=", install_body, re.M)
    assert patched, "install() patches megatron names"
    for alias, name in patched:
        assert (aliases[alias], name) in listed, f"{alias}.{name} is patched but not in TARGETS"


def _fake_megatron(tmp_path: Path) -> Path:
    """A copy of the installed megatron's target modules in which one name moved and one signature changed."""
    real = Path(cpu_adapter._megatron_root())
    fake = tmp_path / "site" / "megatron"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    for module in {t.module for t in cpu_adapter.TARGETS}:
        rel = Path(*module.split(".")[1:])
        src = real / rel.with_suffix(".py")
        if not src.is_file():
            src = real / rel / "__init__.py"
        dst = fake / src.relative_to(real)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    random_py = fake / "core" / "tensor_parallel" / "random.py"
    text = random_py.read_text()
    assert "def _set_cuda_rng_state(" in text
    random_py.write_text(text.replace("def _set_cuda_rng_state(", "def _set_device_rng_state("))
    clip_py = fake / "core" / "optimizer" / "clip_grads.py"
    text = clip_py.read_text()
    clip_py.write_text(text.replace("def clip_grad_by_total_norm_fp32(\n", "def clip_grad_by_total_norm_fp32(\n    grads,\n", 1))
    return tmp_path / "site"


@pytest.mark.medium
@pytest.mark.cpu_only
def test_a_moved_target_fails_at_import(tmp_path):
    site = _fake_megatron(tmp_path)
    out = _run("import cosmos_nemo.parallel", env={"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])})
    assert out.returncode != 0
    assert "AdapterTargetError" in out.stderr
    assert "megatron.core.tensor_parallel.random._set_cuda_rng_state is gone [9: recompute RNG state]" in out.stderr
    assert re.search(r"megatron.core.optimizer.clip_grads.clip_grad_by_total_norm_fp32 takes \('grads', 'parameters'", out.stderr)
    assert "supported: 0.16.1 and 0.19.x" in out.stderr


@pytest.mark.medium
def test_a_moved_target_only_warns_where_cuda_is_present(tmp_path):
    site = _fake_megatron(tmp_path)
    out = _run(
        """
        import warnings
        from unittest import mock
        import torch
        with mock.patch.object(torch.cuda, "is_available", return_value=True), warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            import cosmos_nemo.parallel.cpu_adapter
        print([str(x.message).splitlines()[0] for x in w if issubclass(x.category, RuntimeWarning)])
        """,
        env={"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "moved or changed names that the CPU adapter redirects" in out.stdout


@pytest.mark.medium
@pytest.mark.cpu_only
def test_install_refuses_a_moved_target_before_patching_anything():
    out = _run(
        """
        import torch
        from cosmos_nemo.parallel import cpu_adapter
        from megatron.core.tensor_parallel import random as mp_random
        del mp_random._get_cuda_rng_state  # as if a release renamed it after the import-time check
        before = (torch.cuda.current_device, torch.cuda.synchronize, torch.Tensor.cuda, mp_random.CudaRNGStatesTracker)
        try:
            cpu_adapter.install()
        except cpu_adapter.AdapterTargetError as err:
            print("refused:", str(err).splitlines()[1].strip())
        after = (torch.cuda.current_device, torch.cuda.synchronize, torch.Tensor.cuda, mp_random.CudaRNGStatesTracker)
        print("untouched:", all(a is b for a, b in zip(before, after)) and not cpu_adapter.is_installed())
        """
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "refused: - megatron.core.tensor_parallel.random._get_cuda_rng_state is gone" in out.stdout
    assert "untouched: True" in out.stdout
