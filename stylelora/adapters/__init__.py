"""Adapter files and stacks: the formats, weighted stacks, inspection, merges, resizing and the library folder."""
