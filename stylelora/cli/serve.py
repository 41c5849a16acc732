"""The `stylelora serve` command's flags, and its runner: uvicorn, or Ray Serve replicas with --ray."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..options import add_arguments
from ..serve.config import ServeConfig


def add_serve_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("serve", help="an HTTP API that paints with many adapters on one loaded base",
                            description="Serve POST /v1/generate and the adapter endpoints (OpenAPI page: /docs).")
    p.add_argument("--config", type=Path, help="TOML file with these options (its [serve] table); flags win")
    add_arguments(p, ServeConfig)
    p.add_argument("--ray-address", help="a running Ray cluster to join, e.g. auto (default: start a local one)")


def run_serve(args: argparse.Namespace) -> int:
    from ..serve.config import load_serve_toml, serve_config_from_dict, validate_serve

    values = load_serve_toml(args.config) if args.config else {}
    flags = {k: v for k, v in vars(args).items() if v is not None and k not in ("command", "config", "ray_address")}
    config = validate_serve(serve_config_from_dict(values | flags))
    if config.ray:
        from ..serve.ray_serve import serve_on_ray

        serve_on_ray(config, args.ray_address)
        return 0
    import uvicorn

    from ..serve.app import build_app

    app = build_app(config)
    print(f"stylelora: serving {config.base!r} and the adapters in {config.adapters}/ on "
          f"http://{config.host}:{config.port} (API docs: /docs)", flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")  # build_app took its share of cores
    return 0
