"""Painting with a base and weighted adapter stacks: the one painter (engine.py) with its resident pool and per-row
adapters, the Styler in front of it for one stack at a time, the request a painting takes, generate, grid and
fusing merges."""
