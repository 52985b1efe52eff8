"""Training/evaluation infrastructure: parser, engine, losses, metrics, checkpoints, DDP."""
