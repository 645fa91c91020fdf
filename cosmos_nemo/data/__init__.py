"""Training-time datasets and samplers.

This room owns reading what data_prep wrote (the AR token dataset contract of DESIGN.md), splitting by
split_string over documents, deterministic resumable sampling grouped by latent grid, blending several
datasets, and the batch layout the models' step functions consume."""
