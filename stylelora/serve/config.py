"""The serve job's typed config, checked in one place (flags, a TOML [serve] table and the Python API build it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..model.quantize import check_quantize
from ..options import field_values, read_toml


@dataclass
class ServeConfig:
    base: str = "mini"
    adapters: Path = Path("adapters")  # the folder the UI's library shows: both read the same adapters
    host: str = "127.0.0.1"  # loopback unless told otherwise
    port: int = 8000
    api_key: str | None = None  # every request without it gets 401
    max_resident: int | None = None  # adapters held in RAM at once (least recently used out)
    max_resident_mb: float | None = None  # ... or their tensors' size
    max_queue: int = 64  # queued requests; beyond them, 503 with Retry-After
    max_batch: int = 8  # images painted in one pipeline call
    batch_window_ms: float = 10.0  # how long the oldest request waits for others to batch with
    max_count: int = 8  # images per request
    max_side: int = 1024  # pixels, width or height
    max_steps: int = 100
    max_body_mb: float = 1.0  # a JSON request body; adapter uploads may be up to library.MAX_UPLOAD_BYTES
    quantize_base: str = "none"
    ray: bool = False  # run as Ray Serve replicas (the [ray] extra)
    replicas: int = 1


def validate_serve(config: ServeConfig) -> ServeConfig:
    checks = [
        (0 <= config.port <= 65535, "port", "use a TCP port, 1-65535 (0: any free port)"),
        (config.api_key is None or bool(config.api_key.strip()), "api-key", "give a non-empty key, or leave it out"),
        (config.max_resident is None or config.max_resident >= 1, "max-resident", "hold at least 1 adapter"),
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
    for ok, name, fix in checks:
        if not ok:
            raise ConfigError(f"--{name} = {getattr(config, name.replace('-', '_'))!r}: {fix}")
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
