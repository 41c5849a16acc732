"""`stylelora serve`: an HTTP API that paints with many style adapters on one loaded base, batching requests
that ask for different adapters into one UNet call (app: FastAPI; engine, pool, multilora, batcher: the work)."""
