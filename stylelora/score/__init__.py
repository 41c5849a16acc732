"""Scoring pictures with the base alone, no other weights: how close they are in style to the training images
(style.py: the VAE encoder's texture statistics) and whether they still show their prompts (prompt.py: the base as
a zero-shot classifier)."""
