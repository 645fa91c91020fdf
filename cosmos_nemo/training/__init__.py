"""The train loop and everything it saves.

This room owns the trainer on megatron's pipeline schedules, DDP and optimizer; learning-rate schedules,
gradient clipping, EMA, logging (console, TensorBoard, W&B), and the run folder with atomic checkpoint
save and exact resume."""
