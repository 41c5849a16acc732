"""The built-in miniature Stable Diffusion: its world, tokenizer, architecture, pretraining, weights and judge."""
