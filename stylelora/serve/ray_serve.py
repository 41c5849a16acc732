"""`stylelora serve --ray --replicas N`: the same FastAPI app as N Ray Serve replicas behind Ray's HTTP proxy.

Each replica loads its own base and adapter pool; all of them read the one adapter folder, so an upload to any
replica is served by every one (a cluster needs that folder on shared storage). Ray Serve does the routing,
the replica restarts and the scaling; nothing of that is written here.
"""

from __future__ import annotations

import time

from ..errors import ConfigError
from .config import ServeConfig, validate_serve


def _ray():
    try:
        import ray
        from ray import serve
    except ImportError:
        raise ConfigError("--ray needs Ray Serve: pip install -e '.[ray]' (or pip install 'ray[serve]')") from None
    return ray, serve


def start_on_ray(config: ServeConfig, address: str | None = None):
    """Start `config.replicas` replicas on Ray (`address`: a running cluster, e.g. 'auto'; None: a local Ray)
    and return the app's handle once every replica is up."""
    validate_serve(config)
    ray, serve = _ray()
    from .app import build_app

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": config.host, "port": config.port})
    def builder():  # evaluated on each replica: its own base and pool (a plain function: Ray calls a partial
        return build_app(config)  # as if it were the ASGI app itself)

    deployment = serve.deployment(serve.ingress(builder)(), name="stylelora", num_replicas=config.replicas,
                                  ray_actor_options={"num_cpus": 0})
    return serve.run(deployment.bind(), name="stylelora", route_prefix="/")


def serve_on_ray(config: ServeConfig, address: str | None = None) -> None:
    """Start the replicas and keep them running until Ctrl-C."""
    ray, serve = _ray()
    start_on_ray(config, address)
    print(f"stylelora: serving on http://{config.host}:{config.port} with {config.replicas} Ray replicas "
          "(Ctrl-C stops them)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
