"""The training loop and what it needs: devices, checkpoints, RNG state."""
