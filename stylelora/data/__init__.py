"""Training data: the image folder and its captions, the validation split, aspect-ratio buckets, latent caches and the UI's workspace."""
