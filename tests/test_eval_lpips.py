"""LPIPS equals the `lpips` PyPI package (v0.1, VGG) with the same weights.

The `lpips` package imports torchvision, whose import fails on this CPU torch build ("operator
torchvision::nms does not exist": no torchvision wheel matches torch 2.13 CPU). The reference side
therefore runs in a subprocess that first declares the two operator schemas torchvision's import
registers fake kernels for. That shim is TEST-ONLY, touches nothing the package computes (LPIPS uses no
torchvision ops, only its VGG16 layer definitions), and stays out of this process.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from cosmos_nemo.eval.lpips import LPIPSVGG, load_lpips, lpips_per_frame, lpips_state_from_files
from cosmos_nemo.eval.synthetic import synthetic_frames

# Only look for the package here: importing it in this process is what fails (see the module docstring).
if importlib.util.find_spec("lpips") is None:
    pytest.skip("the lpips package (a dev dependency) is not installed", allow_module_level=True)

_REFERENCE = textwrap.dedent(
    """
    import json, sys, warnings
    import numpy as np, torch
    warnings.filterwarnings("ignore")
    # TEST-ONLY SHIM: PyPI's torchvision is a CUDA build; beside a CPU-only torch build (Python 3.11's
    # torch on these machines) its C ops do not load, so its import dies registering fake kernels for
    # nms/qnms. Declaring the two schemas lets `import torchvision` (and so `lpips`) work. Beside a CUDA
    # torch build (Python 3.12's, from PyPI) its C ops load and declare them themselves: no shim then.
    if torch.version.cuda is None:
        _tv = torch.library.Library("torchvision", "DEF")
        _tv.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _tv.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import lpips
    from safetensors.torch import save_file

    out_dir = sys.argv[1]
    torch.manual_seed(0)
    # Random VGG16 trunk (pnet_rand: no ImageNet download) with the package's own v0.1 linear heads.
    model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, f"{out_dir}/lpips_vgg.safetensors")
    # The same weights as two files: torchvision-style VGG16 `features.N.*` and the package's heads.
    feats = {k.split(".", 2)[2]: v for k, v in state.items() if k.startswith("net.slice")}
    torch.save({f"features.{k}": v for k, v in feats.items()}, f"{out_dir}/vgg16.pth")
    torch.save({k: v for k, v in state.items() if k.startswith("lin") and not k.startswith("lins")}, f"{out_dir}/vgg_lin.pth")
    frames = np.load(f"{out_dir}/frames.npy")
    values = []
    with torch.no_grad():
        for a, b in zip(frames[0], frames[1]):
            x0 = torch.from_numpy(2 * (a[None] / 255.0 - 0.5)).to(torch.float32).permute(0, 3, 1, 2)
            x1 = torch.from_numpy(2 * (b[None] / 255.0 - 0.5)).to(torch.float32).permute(0, 3, 1, 2)
            values.append(model(x0, x1).item())
    json.dump(values, open(f"{out_dir}/values.json", "w"))
    """
)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("lpips_ref")
    a = synthetic_frames(3, 37, 53, seed=4)
    rng = np.random.default_rng(0)
    b = np.clip(a.astype(np.int16) + rng.integers(-30, 31, a.shape), 0, 255).astype(np.uint8)
    np.save(out / "frames.npy", np.stack([a, b]))
    proc = subprocess.run([sys.executable, "-c", _REFERENCE, str(out)], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"reference lpips run failed:\n{proc.stderr[-3000:]}")
    return out, a, b, json.loads((out / "values.json").read_text())


@pytest.mark.medium
def test_lpips_equals_package(reference):
    out, a, b, ref_values = reference
    model = load_lpips([out / "lpips_vgg.safetensors"])
    ours = lpips_per_frame(model, a, b, batch=2).numpy()
    np.testing.assert_allclose(ours, ref_values, rtol=0, atol=1e-6)
    assert np.ptp(ref_values) > 0  # the frames differ, so this compares more than one constant


def test_two_file_form_gives_same_weights(reference):
    out, a, b, ref_values = reference
    model = load_lpips([out / "vgg16.pth", out / "vgg_lin.pth"])
    ours = lpips_per_frame(model, a, b, batch=3).numpy()
    np.testing.assert_allclose(ours, ref_values, rtol=0, atol=1e-6)


def test_identical_frames_score_zero(reference):
    out, a, _, _ = reference
    model = load_lpips([out / "lpips_vgg.safetensors"])
    assert np.abs(lpips_per_frame(model, a, a).numpy()).max() < 1e-7


def test_incomplete_weights_are_refused(reference):
    out, *_ = reference
    with pytest.raises(ValueError, match=r"LPIPS linear heads \(lpips weights/v0.1/vgg.pth\)"):
        lpips_state_from_files([out / "vgg16.pth"])
    with pytest.raises(ValueError, match=r"VGG16 conv weights \(vgg16-397923af.pth\)"):
        lpips_state_from_files([out / "vgg_lin.pth"])
    with pytest.raises(FileNotFoundError, match="--lpips-weights"):
        lpips_state_from_files([out / "nope.pth"])


class _Arbitrary:
    """A class no weights-only allowlist holds (megatron-core allowlists argparse.Namespace on import)."""

    def __init__(self, a):
        self.a = a


def test_pickled_objects_are_refused(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"x": _Arbitrary(1)}, bad)  # an arbitrary object: only a full unpickle could load it
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        lpips_state_from_files([bad])


def test_model_shapes():
    sd = LPIPSVGG().state_dict()
    assert len([k for k in sd if k.startswith("convs")]) == 26 and len([k for k in sd if k.startswith("lins")]) == 5
    assert sum(v.numel() for k, v in sd.items() if k.startswith("convs")) == 14_714_688  # VGG16 conv params


def test_cli_lpips_matches_package_values(reference, tmp_path):
    """`--metrics lpips` end to end: per-video LPIPS is the mean over frames of the package's values."""
    from cosmos_nemo.cli import main
    from cosmos_nemo.io.video import read_frames, write_mp4

    out, *_ = reference
    gt, gen = tmp_path / "gt", tmp_path / "gen"
    frames = synthetic_frames(3, 37, 53, seed=4)
    write_mp4(gt / "a.mp4", frames, crf=0)
    write_mp4(gen / "a.mp4", frames, crf=35)
    rc = main(["evaluate", "tokenbench", "--gtpath", str(gt), "--targetpath", str(gen), "--metrics", "psnr,lpips",
               "--lpips-weights", str(out / "lpips_vgg.safetensors"), "--chunk-size", "2", "--lpips-batch", "1"])
    assert rc == 0
    (name, value), = json.loads((gen / "lpips.json").read_text())
    model = load_lpips([out / "lpips_vgg.safetensors"])
    direct = lpips_per_frame(model, read_frames(gt / "a.mp4"), read_frames(gen / "a.mp4")).mean().item()
    assert name == "a.mp4" and value == pytest.approx(direct, abs=1e-7) and value > 0
    assert json.loads((gen / "tokenbench.json").read_text())["means"]["lpips"] == pytest.approx(value)
