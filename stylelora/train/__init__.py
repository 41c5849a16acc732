"""Training one adapter: its config, the stages and loop, the loss, validation, checkpoints, outputs and background jobs."""
