"""Training-time datasets and samplers.

This room owns the AR token dataset contract of DESIGN.md: writing it (`write_ar_dataset`, called by
data_prep), reading and validating it (`ARTokenDataset`), splitting by split_string over documents,
deterministic resumable sampling grouped by latent grid, blending several datasets, and the batch layout
the models' step functions consume (`build_ar_dataloaders`). `validate_for_model` checks data against a
model configuration before the model is built.

Public API:
    ARDatasetMeta, write_ar_dataset, write_text_embeddings      (ar_dataset)
    ARTokenDataset, ARDocument, read_dataset_info                (reader)
    ARDataConfig, build_ar_dataloaders, ARDataLoader             (loader)
    split_ranges, parse_split_string, GridBatchSampler           (sampler)
    validate_for_model, DataModelMismatch                        (validation)
    write_pattern_dataset                                        (synthetic, for tests and demos)
"""

from cosmos_nemo.data.ar_dataset import (
    ARDatasetError,
    ARDatasetMeta,
    DatasetExistsError,
    IncompleteDatasetError,
    write_ar_dataset,
    write_text_embeddings,
)
from cosmos_nemo.data.reader import ARDocument, ARTokenDataset, read_dataset_info
from cosmos_nemo.data.loader import ARDataConfig, ARDataLoader, build_ar_dataloaders
from cosmos_nemo.data.sampler import GridBatchSampler, SamplerError, parse_split_string, split_ranges
from cosmos_nemo.data.synthetic import write_pattern_dataset
from cosmos_nemo.data.validation import DataModelMismatch, validate_for_model

__all__ = [
    "ARDatasetError",
    "ARDatasetMeta",
    "ARDocument",
    "ARTokenDataset",
    "DatasetExistsError",
    "IncompleteDatasetError",
    "read_dataset_info",
    "write_ar_dataset",
    "write_text_embeddings",
    "ARDataConfig",
    "ARDataLoader",
    "build_ar_dataloaders",
    "GridBatchSampler",
    "SamplerError",
    "parse_split_string",
    "split_ranges",
    "write_pattern_dataset",
    "DataModelMismatch",
    "validate_for_model",
]
