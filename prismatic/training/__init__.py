"""Training: configuration, distributed setup, the training loop, logging and checkpoints."""
