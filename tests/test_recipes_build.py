"""Recipes: every one builds, serialises through nemo-run (fiddle) and rebuilds identically; defaults follow
their stated sources; the tokenizer-swap recipes recompute the grid and follow the vocabulary rule;
dotted overrides apply and unknown keys name the closest valid key."""

from __future__ import annotations

import dataclasses

import fiddle as fdl
import pytest
from nemo_run.core.serialization.yaml import YamlSerializer
from nemo_run.core.serialization.zlib_json import ZlibJSONSerializer

from cosmos_nemo.models.ar.config import ar_config
from cosmos_nemo.recipes import ar
from cosmos_nemo.recipes.overrides import OverrideError, apply_overrides, apply_toml, valid_keys
from cosmos_nemo.recipes.registry import RECIPES, build_recipe, get_recipe, recipe_arguments
from cosmos_nemo.tokenizers.grid import GridError
from cosmos_nemo.training.config import OptimizerConfig
from cosmos_nemo.training.trainer import train

COMPONENTS = ("model", "data", "optim", "trainer", "checkpoint", "parallel", "log")


def _built(recipe):
    fn = fdl.build(recipe)
    return fn.func, {k: fn.keywords.get(k) for k in (*COMPONENTS, "peft")}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_round_trips_through_nemo_run_serialisation(name):
    recipe = build_recipe(name)
    text = ZlibJSONSerializer().serialize(recipe)
    again = ZlibJSONSerializer().deserialize(text)
    assert again == recipe
    fn_a, parts_a = _built(recipe)
    fn_b, parts_b = _built(again)
    assert fn_a is fn_b is train
    for key in COMPONENTS:
        assert dataclasses.is_dataclass(parts_a[key]), key
        assert parts_a[key] == parts_b[key], key
    # dtypes are strings, so the YAML form nemo-run shows users is plain data too
    assert "precision: " in YamlSerializer().serialize(recipe)
    assert isinstance(parts_a["trainer"].precision, str)


@pytest.mark.parametrize("recipe_name, config_name", [
    ("cosmos_ar_4b_finetune", "4b"), ("cosmos_ar_12b_finetune", "12b"), ("cosmos_ar_5b_v2w_finetune", "5b_v2w"),
    ("cosmos_ar_13b_v2w_finetune", "13b_v2w"), ("cosmos_ar_tiny_finetune", "tiny"),
    ("cosmos_ar_tiny_v2w_finetune", "tiny_v2w"),
])
def test_recipe_models_are_the_named_architectures(recipe_name, config_name):
    _, parts = _built(build_recipe(recipe_name))
    assert parts["model"] == ar_config(config_name)
    assert parts["data"].task == ("video2world" if "v2w" in recipe_name else "base")


@pytest.mark.parametrize("name", ["cosmos_ar_4b_finetune", "cosmos_ar_12b_finetune", "cosmos_ar_5b_v2w_finetune",
                                  "cosmos_ar_13b_v2w_finetune", "cosmos_ar_4b_tokenizer_swap"])
def test_released_size_defaults_follow_seed_003(name):
    _, p = _built(build_recipe(name))
    # seed 003: lr 1e-4, ~300 steps, global batch 32, micro batch 2; NeMo scripts use a constant LR
    assert (p["optim"].lr, p["trainer"].max_steps, p["data"].global_batch_size, p["data"].micro_batch_size) == (
        1e-4, 300, 32, 2)
    assert p["optim"].schedule == "constant" and p["optim"].warmup_steps == 0
    assert p["trainer"].precision == "bf16"
    assert p["checkpoint"].mode == "finetune" and p["checkpoint"].pretrained.startswith("nvidia/Cosmos-1.0-Autoregressive-")
    assert get_recipe(name).__doc__.count("seed 003") >= 1


def test_tiny_recipe_defaults_follow_the_native_trainer_shape():
    _, p = _built(build_recipe("cosmos_ar_tiny_finetune"))
    assert p["optim"].schedule == "cosine" and p["optim"].weight_decay == 0.05 and p["optim"].warmup_steps > 0
    assert p["checkpoint"].mode == "pretrain" and p["parallel"].tensor == 1
    assert "native cosmos-predict1 trainer" in ar.cosmos_ar_tiny_finetune.__doc__


def test_tokenizer_swap_defaults_keep_the_reference_sequence_length():
    # 17 frames x 320 x 512 at 4x8x8: T = 1 + (17-1)/4 = 5, H = 320/8 = 40, W = 512/8 = 64 -> 12,800 tokens
    for name, v2w in (("cosmos_ar_4b_tokenizer_swap", False), ("cosmos_ar_13b_v2w_tokenizer_swap", True)):
        _, p = _built(build_recipe(name))
        assert p["model"].max_grid == (5, 40, 64)
        assert p["model"].seq_length == (((1 + 12800 + 63) // 64) * 64 if v2w else 12800)
        assert p["model"].vocab_size == (64064 if v2w else 64000)


def test_tokenizer_swap_recomputes_the_grid_for_another_resolution():
    _, p = _built(build_recipe("cosmos_ar_4b_tokenizer_swap", {"frames": "9", "height": "256", "width": "384"}))
    assert p["model"].max_grid == (1 + 8 // 4, 256 // 8, 384 // 8)
    assert p["model"].seq_length == 3 * 32 * 48
    _, p = _built(ar.cosmos_ar_tiny_tokenizer_swap(tokenizer="DV8x16x16", frames=17, height=48, width=64))
    assert p["model"].max_grid == (3, 3, 4)


@pytest.mark.parametrize("kwargs, shown", [
    (dict(frames=10), ["frames must be 1 + 4k", "got 10", "9 or 13 would work"]),
    (dict(height=30), ["height must be a multiple of 8", "30 / 8 = 3.75", "24 or 32 would work"]),
    (dict(frames=8, width=50), ["frames must be 1 + 4k", "width must be a multiple of 8", "48 or 56 would work"]),
])
def test_tiny_tokenizer_swap_refuses_inconsistent_shapes_with_the_arithmetic(kwargs, shown):
    with pytest.raises(GridError) as err:
        ar.cosmos_ar_tiny_tokenizer_swap(**kwargs)
    for text in shown:
        assert text in str(err.value)


def test_tiny_tokenizer_swap_to_another_compression():
    # DV8x16x16 at 9x32x48: T = 1 + 8/8 = 2, H = 32/16 = 2, W = 48/16 = 3
    _, p = _built(ar.cosmos_ar_tiny_tokenizer_swap(tokenizer="DV8x16x16"))
    assert p["model"].max_grid == (2, 2, 3)
    with pytest.raises(GridError) as err:
        ar.cosmos_ar_tiny_tokenizer_swap(tokenizer="DV8x16x16", height=40, width=40)
    for text in ("height must be a multiple of 16", "40 / 16 = 2.5", "width must be a multiple of 16"):
        assert text in str(err.value)


def test_tokenizer_swap_takes_a_tokenizer_folder_or_registered_name(tmp_path):
    """`--recipe-arg tokenizer=DIR` (train-tokenizer's output) or `tokenizer=tiny`: the compression and the codebook
    size come from the tokenizer's own config."""
    from cosmos_nemo.tokenizers.configs import TINY, TINY_CV

    folder = tmp_path / "tok"
    folder.mkdir()
    TINY.replace(temporal_compression=8, spatial_compression=16).to_json(folder / "tokenizer_config.json")
    _, p = _built(ar.cosmos_ar_tiny_tokenizer_swap(tokenizer=str(folder)))
    assert p["model"].max_grid == (2, 2, 3)  # 9x32x48 at 8x16x16, as the DV8x16x16 spelling gives
    _, named = _built(ar.cosmos_ar_tiny_tokenizer_swap(tokenizer="tiny"))
    _, spelled = _built(ar.cosmos_ar_tiny_tokenizer_swap(tokenizer="DV4x8x8"))
    assert named["model"].max_grid == spelled["model"].max_grid and named["model"].vocab_size == 64000
    small = tmp_path / "small"
    small.mkdir()
    TINY.replace(levels=(8, 5, 5, 5)).to_json(small / "tokenizer_config.json")  # 1,000 codes: another vocabulary
    with pytest.raises(ar.RecipeError, match="resize_vocab=True"):
        ar.cosmos_ar_tiny_tokenizer_swap(tokenizer=str(small))
    _, p = _built(ar.cosmos_ar_tiny_tokenizer_swap(tokenizer=str(small), resize_vocab=True))
    assert p["model"].output_vocab_size == 1000
    with pytest.raises(ar.RecipeError, match="has 1000 codes"):
        ar.cosmos_ar_tiny_tokenizer_swap(tokenizer=str(small), tokenizer_vocab_size=32000, resize_vocab=True)
    cont = tmp_path / "cont"
    cont.mkdir()
    TINY_CV.to_json(cont / "tokenizer_config.json")
    with pytest.raises(ar.RecipeError, match="continuous"):
        ar.cosmos_ar_tiny_tokenizer_swap(tokenizer=str(cont))
    with pytest.raises(ar.RecipeError, match="without tokenizer_config.json"):
        ar.cosmos_ar_tiny_tokenizer_swap(tokenizer=str(tmp_path))


def test_tokenizer_swap_vocabulary_rule():
    # same 64,000 codes: no change (DESIGN); another vocabulary needs resize_vocab
    with pytest.raises(ar.RecipeError, match="resize_vocab=True"):
        ar.cosmos_ar_tiny_tokenizer_swap(tokenizer_vocab_size=32000)
    _, p = _built(ar.cosmos_ar_tiny_tokenizer_swap(tokenizer_vocab_size=32000, resize_vocab=True))
    assert (p["model"].vocab_size, p["model"].output_vocab_size) == (32000, 32000)
    assert p["model"].resize_vocab is True  # the trainer resizes the pretrained rows when it loads them
    _, same = _built(ar.cosmos_ar_tiny_tokenizer_swap())
    assert same["model"].resize_vocab is False
    # Video2World: special ids follow the codes, embedding rounded up to a multiple of 64
    _, p = _built(ar.cosmos_ar_5b_v2w_tokenizer_swap(tokenizer_vocab_size=1000, resize_vocab=True))
    m = p["model"]
    assert (m.vocab_size, m.output_vocab_size, m.bov_token_id, m.pad_token_id) == (1024, 1000, 1000, 1002)
    with pytest.raises(ar.RecipeError, match="continuous"):
        ar.cosmos_ar_tiny_tokenizer_swap(tokenizer="Cosmos-0.1-Tokenizer-CV4x8x8")


def test_overrides_apply_with_types():
    recipe = build_recipe("cosmos_ar_12b_finetune")
    apply_overrides(recipe, ["trainer.max_steps=100", "data.paths=[/a,/b]", "model.yarn.scale=4", "optim.lr=1e-5",
                             "checkpoint.pretrained=null", "checkpoint.mode=pretrain", "model.max_grid=[3,4,5]",
                             "log.tensorboard=false", "data.weights=[1,2]"])
    _, p = _built(recipe)
    assert p["trainer"].max_steps == 100 and p["data"].paths == ["/a", "/b"]
    assert p["model"].yarn.scale == 4.0 and p["model"].yarn.beta_fast == 4.0  # untouched sibling kept
    assert p["optim"].lr == 1e-5 and isinstance(p["optim"].lr, float)
    assert p["checkpoint"].pretrained is None and p["model"].max_grid == (3, 4, 5)
    assert p["log"].tensorboard is False and p["data"].weights == [1.0, 2.0]
    # a nested config that is absent is created on demand
    tiny = build_recipe("cosmos_ar_tiny_finetune")
    apply_overrides(tiny, ["model.yarn.scale=2"])
    assert fdl.build(tiny.model).yarn.scale == 2.0 and fdl.build(tiny.model).yarn.original_latent_shape == (3, 40, 64)


@pytest.mark.parametrize("override, closest", [
    ("trainr.max_steps=3", "trainer.max_steps"),
    ("trainer.max_step=3", "trainer.max_steps"),
    ("model.num_layer=3", "model.num_layers"),
    ("lr=3", "optim.lr"),
    ("data.global_batch=8", "data.global_batch_size"),
    ("model.yarn.scael=2", "model.yarn.scale"),
])
def test_unknown_override_key_names_the_closest_valid_key(override, closest):
    recipe = build_recipe("cosmos_ar_12b_finetune")
    with pytest.raises(OverrideError) as err:
        apply_overrides(recipe, [override])
    assert f"the closest valid key is {closest!r}" in str(err.value)
    assert closest in valid_keys(recipe)


@pytest.mark.parametrize("override, message", [
    ("trainer.max_steps=abc", "expects an integer"),
    ("trainer.max_steps=1.5", "expects an integer"),
    ("optim.lr=fast", "expects a number"),
    ("log.tensorboard=maybe", "expects true/false"),
    ("trainer.max_steps=null", "cannot be null"),
    ("model.yarn=3", "is a config"),
    ("optim.lr.x=3", "is a value, not a config"),
    ("trainer.max_steps", "KEY=VALUE"),
    ("model.max_grid=[1,2]", "expects 3 values"),
])
def test_bad_override_values_are_refused(override, message):
    with pytest.raises(OverrideError, match=message.replace("[", r"\[")):
        apply_overrides(build_recipe("cosmos_ar_12b_finetune"), [override])


def test_registry_names_and_recipe_arguments():
    assert {"cosmos_ar_4b_finetune", "cosmos_ar_12b_finetune", "cosmos_ar_5b_v2w_finetune", "cosmos_ar_13b_v2w_finetune",
            "cosmos_ar_tiny_finetune", "cosmos_ar_tiny_v2w_finetune"} <= set(RECIPES)
    for base in ("4b", "12b", "5b_v2w", "13b_v2w"):
        assert f"cosmos_ar_{base}_tokenizer_swap" in RECIPES
    with pytest.raises(KeyError, match="did you mean 'cosmos_ar_4b_finetune'"):
        get_recipe("cosmos_ar_4b_finetun")
    with pytest.raises(OverrideError, match="Did you mean 'frames'"):
        build_recipe("cosmos_ar_tiny_tokenizer_swap", {"frame": "9"})
    p = build_recipe("cosmos_ar_tiny_tokenizer_swap", {"frames": "13", "resize_vocab": "false"})
    assert fdl.build(p.model).max_grid == (4, 4, 6)
    # the recipe builds no side effects: the optimizer default of the trainer config is untouched
    assert OptimizerConfig().lr == 1e-4


SWAP_ARGUMENTS = ["tokenizer", "frames", "height", "width", "tokenizer_vocab_size", "resize_vocab"]


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_only_derived_values_are_recipe_arguments(name):
    """Fields are overrides; recipe arguments are kept for the values the latent grid derives from."""
    expected = SWAP_ARGUMENTS if name.endswith("_tokenizer_swap") else []
    assert list(recipe_arguments(name)) == expected


@pytest.mark.parametrize("argument, override", [
    ("max_steps", "trainer.max_steps=VALUE"), ("lr", "optim.lr=VALUE"), ("data_paths", "data.paths=VALUE"),
    ("output_root", "checkpoint.output_root=VALUE"), ("pretrained", "checkpoint.pretrained=VALUE"),
])
def test_a_field_given_as_a_recipe_argument_names_its_override(argument, override):
    with pytest.raises(OverrideError) as err:
        build_recipe("cosmos_ar_tiny_finetune", {argument: "1"})
    assert override in str(err.value) and "takes no arguments" in str(err.value)
    with pytest.raises(OverrideError, match="trainer.max_steps=VALUE. Arguments: tokenizer, frames"):
        build_recipe("cosmos_ar_tiny_tokenizer_swap", {"max_steps": "5"})


# The values each recipe must keep (its docstring says where they come from). Columns: model, data task,
# run-folder group and name, pretrained, TP, lr, schedule, steps, global/micro batch, split, precision,
# checkpoint and validation interval, TensorBoard.
_RELEASED = dict(lr=1e-4, schedule="constant", warmup=0, min_lr=0.0, wd=0.01, steps=300, gbs=32, mbs=2,
                 split="10,1,1", precision="bf16", save=100, val=100, tensorboard=True)
_TINY = dict(lr=3e-3, schedule="cosine", warmup=2, min_lr=3e-3 / 10, wd=0.05, steps=20, gbs=4, mbs=2, split="8,1,1",
             precision="fp32", save=10, val=10, tensorboard=False)
PINNED = {
    "cosmos_ar_4b_finetune": dict(_RELEASED, model="4b", tp=2, pretrained=ar.HUB_IDS["4b"]),
    "cosmos_ar_12b_finetune": dict(_RELEASED, model="12b", tp=8, pretrained=ar.HUB_IDS["12b"]),
    "cosmos_ar_5b_v2w_finetune": dict(_RELEASED, model="5b_v2w", tp=2, pretrained=ar.HUB_IDS["5b_v2w"]),
    "cosmos_ar_13b_v2w_finetune": dict(_RELEASED, model="13b_v2w", tp=8, pretrained=ar.HUB_IDS["13b_v2w"]),
    "cosmos_ar_4b_tokenizer_swap": dict(_RELEASED, model="4b", tp=2, pretrained=ar.HUB_IDS["4b"], grid=(5, 40, 64)),
    "cosmos_ar_12b_tokenizer_swap": dict(_RELEASED, model="12b", tp=8, pretrained=ar.HUB_IDS["12b"], grid=(5, 40, 64)),
    "cosmos_ar_5b_v2w_tokenizer_swap": dict(_RELEASED, model="5b_v2w", tp=2, pretrained=ar.HUB_IDS["5b_v2w"],
                                            grid=(5, 40, 64)),
    "cosmos_ar_13b_v2w_tokenizer_swap": dict(_RELEASED, model="13b_v2w", tp=8, pretrained=ar.HUB_IDS["13b_v2w"],
                                             grid=(5, 40, 64)),
    "cosmos_ar_tiny_finetune": dict(_TINY, model="tiny", tp=1, pretrained=None),
    "cosmos_ar_4b_lora": dict(_RELEASED, model="4b", tp=2, pretrained=ar.HUB_IDS["4b"], peft=(32, 32.0)),
    "cosmos_ar_tiny_lora": dict(_TINY, model="tiny", tp=1, pretrained=None, lr=1e-2, mode="finetune", peft=(8, 16.0)),
    "cosmos_ar_tiny_v2w_finetune": dict(_TINY, model="tiny_v2w", tp=1, pretrained=None),
    "cosmos_ar_tiny_tokenizer_swap": dict(_TINY, model="tiny", tp=1, pretrained=None, grid=(3, 4, 6)),
}


def test_every_recipe_has_pinned_values():
    assert set(PINNED) == {name for name in RECIPES if name.startswith("cosmos_ar_")}  # DiT: test_dit_recipes.py


@pytest.mark.parametrize("name", sorted(PINNED))
def test_recipe_values_are_pinned(name, tmp_path):
    want = PINNED[name]
    _, p = _built(build_recipe(name))
    v2w = want["model"].endswith("v2w")
    assert p["model"].name == want["model"]
    assert p["model"].max_grid == want.get("grid", ar_config(want["model"]).max_grid)
    assert p["data"].task == ("video2world" if v2w else "base") and p["data"].paths == []
    assert (p["data"].global_batch_size, p["data"].micro_batch_size, p["data"].split_string) == (
        want["gbs"], want["mbs"], want["split"])
    assert p["data"].exclude_first_frame is False
    assert (p["optim"].lr, p["optim"].min_lr, p["optim"].schedule, p["optim"].warmup_steps, p["optim"].weight_decay) == (
        want["lr"], want["min_lr"], want["schedule"], want["warmup"], want["wd"])
    assert (p["trainer"].max_steps, p["trainer"].precision, p["trainer"].val_interval, p["trainer"].z_loss) == (
        want["steps"], want["precision"], want["val"], 0.0)
    assert (p["parallel"].tensor, p["parallel"].pipeline, p["parallel"].context) == (want["tp"], 1, 1)
    assert p["log"].tensorboard is want["tensorboard"]
    ckpt = p["checkpoint"]
    assert ckpt.pretrained == want["pretrained"]
    assert ckpt.mode == want.get("mode", "finetune" if want["pretrained"] else "pretrain")
    peft = p.get("peft")
    assert (None if peft is None else (peft.rank, peft.alpha)) == want.get("peft")
    if peft is not None:  # every attention and MLP linear of the AR blocks
        assert peft.targets == ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"]
    assert ckpt.save_interval == want["save"]
    # the run folder: <output_root>/<project>/<group>/<recipe name>/
    assert (ckpt.output_root, ckpt.project, ckpt.group, ckpt.name) == (
        "runs", "cosmos_nemo", "autoregressive_video2world" if v2w else "autoregressive", name)


def test_peft_lora_override_on_any_recipe():
    """`peft=lora` gives any recipe the reference LoRA (r = alpha = 32 on the six targets); fields follow it."""
    from cosmos_nemo.recipes.overrides import apply_overrides

    recipe = build_recipe("cosmos_ar_tiny_finetune")
    apply_overrides(recipe, ["peft=lora", "peft.rank=4", "peft.targets=[q_proj,v_proj]"])
    peft = fdl.build(recipe).keywords["peft"]
    assert (peft.rank, peft.alpha, peft.targets) == (4, 32.0, ["q_proj", "v_proj"])
    with pytest.raises(OverrideError, match="one of \\['lora'\\]"):
        apply_overrides(build_recipe("cosmos_ar_tiny_finetune"), ["peft=dora"])
    assert fdl.build(apply_overrides(build_recipe("cosmos_ar_tiny_lora"), ["peft=null"])).keywords["peft"] is None


def test_common_base_refuses_an_unknown_model():
    with pytest.raises(ar.RecipeError, match="unknown AR model '7b'"):
        ar.ar_finetune_common("7b", "x")


def test_toml_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("COSMOS_TEST_DATA", "/lustre/tokens")
    path = tmp_path / "run.toml"
    path.write_text(
        "[trainer]\nmax_steps = 50\nprecision = 'fp32'\n[data]\npaths = ['${oc.env:COSMOS_TEST_DATA}/a']\n"
        "global_batch_size = 8\n[model.yarn]\nscale = 3.0\n[checkpoint]\nname = '${oc.env:COSMOS_UNSET_VAR,run7}'\n"
    )
    recipe = apply_toml(build_recipe("cosmos_ar_12b_finetune"), str(path))
    _, p = _built(recipe)
    assert (p["trainer"].max_steps, p["trainer"].precision, p["data"].global_batch_size) == (50, "fp32", 8)
    assert p["data"].paths == ["/lustre/tokens/a"] and p["checkpoint"].name == "run7"
    assert p["model"].yarn.scale == 3.0 and p["model"].yarn.beta_fast == 4.0
    path.write_text("[trainer]\nmax_step = 5\n")
    with pytest.raises(OverrideError, match="closest valid key is 'trainer.max_steps'"):
        apply_toml(build_recipe("cosmos_ar_tiny_finetune"), str(path))
    path.write_text("[trainer]\nmax_steps = 'many'\n")
    with pytest.raises(OverrideError, match="trainer.max_steps expects an integer"):
        apply_toml(build_recipe("cosmos_ar_tiny_finetune"), str(path))
    path.write_text("[data]\npaths = ['${oc.env:COSMOS_UNSET_VAR}']\n")
    with pytest.raises(OverrideError, match="COSMOS_UNSET_VAR is not set"):
        apply_toml(build_recipe("cosmos_ar_tiny_finetune"), str(path))
