"""Recipe functions returning nemo-run configs, and their launch.

- `ar`: the Cosmos AR recipes (4B/12B/5B-V2W/13B-V2W fine-tuning, tokenizer swaps, tiny CPU variants); each
  returns `nemo_run.Partial(train, model=..., data=..., optim=..., trainer=..., checkpoint=..., parallel=..., log=...)`.
- `registry`: recipes by name (`get_recipe`, `build_recipe`, `list_recipes`).
- `overrides`: dotted overrides (`trainer.max_steps=100`) checked against the dataclass fields.
- `launch`: checks before a run (sizes, batch, data, weights), LocalExecutor/SlurmExecutor, the launch itself.
- `commands`: `cosmos-nemo train RECIPE [KEY=VALUE ...]`.

This room and cli.py are the only ones that import nemo_run. Nothing is imported here, so that
`import cosmos_nemo.recipes` stays cheap.
"""
