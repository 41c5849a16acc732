"""`stylelora serve`: an HTTP API over the painting engine (paint/engine.py): the FastAPI app, the batcher that
groups requests for one UNet call, body limits, metrics and Ray replicas."""
