"""cosmos-nemo: post-training recipes for NVIDIA Cosmos world foundation models on megatron-core."""

__version__ = "0.1.0"

# Set to 1 to see the import-time notices of megatron-core and torch that are silenced below.
SHOW_NOTICES_ENV = "COSMOS_NEMO_SHOW_IMPORT_NOTICES"

# Import-time notices of our dependencies that a cosmos-nemo user cannot act on, by exact text: megatron-core's
# "Transformer Engine and Apex are not installed" (four modules) and "Apex is not installed" (always true on a
# CPU; on a GPU `parallel.setup()` says it once, with what to install), its "GPTModel IS DEPRECATED" (our AR
# family is built on GPTModel; the migration is ours to make) and "MimoModelConfig is experimental" (a module we
# never use, imported by megatron's package), its "full scope is deprecated" (megatron 0.19's TransformerConfig
# warns about its own default CUDA-graph scope), and torch's "No CUDA runtime is found" (a CPU machine).
_SILENCED_WARNINGS = ("Transformer Engine and Apex are not installed", "Apex is not installed",
                      "MimoModelConfig is experimental", "full scope is deprecated")
_SILENCED_LOG_LINES = {"megatron.core.models.gpt.gpt_model": "GPTModel IS DEPRECATED",
                       "torch.utils.cpp_extension": "No CUDA runtime is found"}


def _silence_dependency_notices() -> None:
    import logging
    import os
    import warnings

    if os.environ.get(SHOW_NOTICES_ENV, "") not in ("", "0"):
        return
    for text in _SILENCED_WARNINGS:
        warnings.filterwarnings("ignore", message=text, category=UserWarning)
    for name, text in _SILENCED_LOG_LINES.items():
        logging.getLogger(name).addFilter(lambda record, text=text: text not in record.getMessage())


_silence_dependency_notices()
