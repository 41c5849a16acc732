"""Painting with a base and a weighted stack of adapters: the Styler, generate, grid and fusing merges."""
