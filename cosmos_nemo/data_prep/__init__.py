"""The `prepare` commands: raw videos to training datasets.

This room owns turning a folder of videos (and captions) into the datasets that data/ reads: decoding,
clip windows, resize/crop, tokenization, text embeddings, prompt files and jsonl. It is resumable,
parallel, shows progress, and reports every skipped input with a reason."""
