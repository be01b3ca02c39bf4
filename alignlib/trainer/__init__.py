"""The training loop (offline and online share it), log-prob computation, checkpoints, logs."""
