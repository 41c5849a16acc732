"""The `stylelora serve` command's flags, and its runner: uvicorn, or Ray Serve replicas with --ray."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..model.quantize import QUANTIZE_HELP, QUANTIZE_MODES



def add_serve_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("serve", help="an HTTP API that paints with many adapters on one loaded base",
                            description="Serve POST /v1/generate and the adapter endpoints (OpenAPI page: /docs).")
    p.add_argument("--config", type=Path, help="TOML file with these options (its [serve] table); flags win")
    p.add_argument("--base", help="'mini' (default), a hub id, a diffusers folder or a .safetensors file")
    p.add_argument("--adapters", type=Path, help="the adapter folder, shared with the UI's library (adapters)")
    p.add_argument("--host", help="address to listen on (127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, help="TCP port (8000)")
    p.add_argument("--api-key", help="require `Authorization: Bearer KEY` on every request (off)")
    p.add_argument("--max-resident", type=int, help="adapters held in RAM at once, least recently used out (no limit)")
    p.add_argument("--max-resident-mb", type=float, help="... or a bound on their tensors' size in MB")
    p.add_argument("--max-queue", type=int, help="queued requests before 503 with Retry-After (64)")
    p.add_argument("--max-batch", type=int, help="images painted in one UNet batch (8)")
    p.add_argument("--batch-window-ms", type=float, help="how long a request waits for others to batch with (10)")
    p.add_argument("--max-count", type=int, help="images a request may ask for (8)")
    p.add_argument("--max-side", type=int, help="largest width or height a request may ask for (1024)")
    p.add_argument("--max-steps", type=int, help="most denoising steps a request may ask for (100)")
    p.add_argument("--max-body-mb", type=float, help="largest JSON request body in MB (1); uploads may be 512 MB")
    p.add_argument("--quantize-base", choices=QUANTIZE_MODES, help=QUANTIZE_HELP)
    p.add_argument("--ray", action="store_true", default=None, help="run as Ray Serve replicas (the [ray] extra)")
    p.add_argument("--replicas", type=int, help="Ray Serve replicas, each with its own base and pool (1)")
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
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
    return 0
