"""The serve job's typed config, checked in one place (flags, a TOML [serve] table and the Python API build it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..model.cores import THREADS_DEFAULT, THREADS_HELP
from ..model.quantize import QUANTIZE_HELP, QUANTIZE_MODES, check_quantize
from ..options import field_values, option, read_toml, refuse_first


@dataclass
class ServeConfig:
    """The server's settings, each option declared once (options.option): the `stylelora serve` flags, the TOML
    [serve] keys and the docs' option table are built from these fields."""

    base: str = option("mini", "'mini' (built in), a hub id, a diffusers folder or a .safetensors file")
    adapters: Path = option(Path("adapters"), "the adapter folder, shared with the UI's library")
    host: str = option("127.0.0.1", "address to listen on (127.0.0.1: this machine only)")
    port: int = option(8000, "TCP port")
    api_key: str | None = option(None, "require `Authorization: Bearer KEY` on every request", default_text="off")
    max_resident: int | None = option(None, "adapters held in RAM at once, least recently used out",
                                      default_text="no limit")
    max_resident_mb: float | None = option(None, "... or a bound on their tensors' size in MB", default_text="no limit")
    max_queue: int = option(64, "queued requests before 503 with Retry-After")
    max_batch: int = option(8, "images painted in one UNet batch")
    batch_window_ms: float = option(10.0, "how long a request waits for others to batch with")
    max_count: int = option(8, "images a request may ask for")
    max_side: int = option(1024, "largest width or height a request may ask for")
    max_steps: int = option(100, "most denoising steps a request may ask for")
    max_body_mb: float = option(1.0, "largest JSON request body in MB; uploads may be 512 MB")
    quantize_base: str = option("none", QUANTIZE_HELP, choices=QUANTIZE_MODES)
    threads: int | None = option(None, THREADS_HELP, default_text=THREADS_DEFAULT)
    ray: bool = option(False, "run as Ray Serve replicas (the [ray] extra)", negatable=False)
    replicas: int = option(1, "Ray Serve replicas, each with its own base and pool")


def validate_serve(config: ServeConfig) -> ServeConfig:
    checks = [
        (0 <= config.port <= 65535, "port", "use a TCP port, 1-65535 (0: any free port)"),
        (config.api_key is None or bool(config.api_key.strip()), "api-key", "give a non-empty key, or leave it out"),
        (config.max_resident is None or config.max_resident >= 1, "max-resident", "hold at least 1 adapter"),
        (config.threads is None or config.threads >= 1, "threads", "use at least 1 thread, or leave it out"),
        (config.max_resident_mb is None or config.max_resident_mb > 0, "max-resident-mb", "give a size above 0"),
        (config.max_queue >= 1, "max-queue", "queue at least 1 request"),
        (config.max_batch >= 1, "max-batch", "paint at least 1 image a batch"),
        (config.batch_window_ms >= 0, "batch-window-ms", "wait 0 ms or more"),
        (config.max_count >= 1, "max-count", "allow at least 1 image a request"),
        (config.max_side >= 8, "max-side", "allow at least 8 pixels"),
        (config.max_steps >= 1, "max-steps", "allow at least 1 step"),
        (config.max_body_mb > 0, "max-body-mb", "give a size above 0"),
        (config.replicas >= 1, "replicas", "run at least 1 replica"),
        (config.replicas == 1 or config.ray, "replicas", "several replicas run under Ray: add --ray"),
        (not (config.max_resident and config.max_resident_mb), "max-resident", "give --max-resident or "
                                                                               "--max-resident-mb, not both"),
    ]
    refuse_first(config, checks)
    if Path(config.adapters).exists() and not Path(config.adapters).is_dir():
        raise ConfigError(f"--adapters {config.adapters}: is a file; give the folder adapters are kept in")
    check_quantize(config.quantize_base)
    return config


def serve_config_from_dict(values: dict[str, Any]) -> ServeConfig:
    """A ServeConfig from plain values (a TOML table, flags); kebab-case keys, as the flags spell them."""
    return ServeConfig(**field_values(ServeConfig, values, "serve", {"adapters": Path}))


def load_serve_toml(path: Path) -> dict[str, Any]:
    """A --config file's [serve] table (or the whole file, if it has none)."""
    table = read_toml(path)
    return dict(table.get("serve", table))
