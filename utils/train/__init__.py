"""The training engine both trainers share: options, set-up, the iteration, the log, DDP."""
