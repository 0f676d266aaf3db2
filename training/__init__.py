"""Training loops, checkpoints and logging."""
