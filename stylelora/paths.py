"""Where stylelora keeps what it learns about this machine and what it can compute again: under the user's cache
folder (XDG_CACHE_HOME, else ~/.cache), in stylelora/. A module of its own so the light modules that need it
(the precision probe, the core registry) load nothing more."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache(name: str) -> Path:
    """`name` (a file or folder) in stylelora's own cache folder."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stylelora" / name
