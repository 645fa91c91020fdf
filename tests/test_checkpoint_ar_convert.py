"""`cosmos-nemo convert ar-import / ar-export`: released layout -> dist-ckpt -> released layout, bit-exact."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from cosmos_nemo.models.ar.convert import expected_released_shapes
from cosmos_nemo.cli import main
from cosmos_nemo.models.ar.config import ar_config


@pytest.mark.medium
def test_cli_round_trip_through_dist_ckpt(tmp_path, capsys):
    torch.set_num_threads(2)
    cfg = ar_config("tiny_v2w", num_layers=2)
    g = torch.Generator().manual_seed(0)
    state = {"model." + k: torch.randn(s, generator=g) for k, s in expected_released_shapes(cfg).items()}
    torch.save(state, tmp_path / "model.pt")
    ckpt = tmp_path / "run" / "checkpoints" / "iter_000000000" / "model"
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "latest_checkpoint.txt").write_text("iter_000000000\n")

    assert main(["convert", "ar-import", "--checkpoint_path", str(tmp_path), "--model", "tiny_v2w",
                 "--set", "num_layers=2", "--output", str(ckpt)]) == 0
    assert (ckpt / ".metadata").is_file()
    # the run folder resolves through latest_checkpoint.txt
    out = tmp_path / "exported.safetensors"
    assert main(["convert", "ar-export", "--checkpoint", str(tmp_path / "run"), "--model", "tiny_v2w",
                 "--set", "num_layers=2", "--output", str(out)]) == 0
    back = load_file(str(out))
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)
    # without the prefix, cast, as a torch file
    bare = tmp_path / "bare.pt"
    assert main(["convert", "ar-export", "--checkpoint", str(ckpt), "--model", "tiny_v2w", "--set", "num_layers=2",
                 "--output", str(bare), "--no-prefix", "--dtype", "bfloat16"]) == 0
    back = torch.load(bare, weights_only=True)
    assert back.keys() == {k[len("model."):] for k in state}
    assert all(torch.equal(back[k[len("model."):]], v.to(torch.bfloat16)) for k, v in state.items())

    # strict: a checkpoint of another architecture is refused with the key list, nothing written
    bad = dict(state)
    del bad["model.layers.1.ffn_norm.weight"]
    save_file(bad, str(tmp_path / "bad.safetensors"))
    capsys.readouterr()
    assert main(["convert", "ar-import", "--checkpoint_path", str(tmp_path / "bad.safetensors"), "--model",
                 "tiny_v2w", "--set", "num_layers=2", "--output", str(tmp_path / "bad_ckpt")]) == 2
    assert "layers.1.ffn_norm.weight" in capsys.readouterr().out
    assert not (tmp_path / "bad_ckpt").exists()
    # an existing output is not overwritten silently
    assert main(["convert", "ar-export", "--checkpoint", str(ckpt), "--model", "tiny_v2w", "--set", "num_layers=2",
                 "--output", str(out)]) == 2
    assert "exists" in capsys.readouterr().out


def test_convert_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["convert", "ar-export", "--help"])
    text = capsys.readouterr().out
    for flag in ("--checkpoint", "--model", "--set", "--output", "--no-prefix", "--dtype", "--overwrite"):
        assert flag in text
