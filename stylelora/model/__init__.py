"""Loading a base: the pipeline, its UNet streamed or quantized, and the precision to compute in."""
