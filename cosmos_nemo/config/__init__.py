"""Typed dataclass configs and the TOML front-end.

This room owns the configuration schema shared by every other room: dataclasses for model, data,
optimizer, trainer, checkpoint, parallel and logging settings, the dotted-override parser the CLI uses,
and validation of TOML files against a pydantic schema that forbids unknown keys."""
