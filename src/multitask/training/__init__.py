"""Training: data on the device, the trainer loop, per-task gradients, checkpoints, metrics."""
