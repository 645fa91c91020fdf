"""Recipe functions returning nemo-run configs.

This room owns the named recipes (one module per model family): plain functions with typed, defaulted
arguments that return nemo_run.Partial of the train entry. It is the only room, with cli.py, that imports
nemo_run."""
