"""Painting with a base and weighted adapter stacks: the Styler, the engine that paints mixed batches (with its
per-row adapters and resident pool), what both do around a pipeline (pipeline.py), generate, grid and fusing merges."""
