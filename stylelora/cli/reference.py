"""The docs' option reference, built from the option declarations: `python -m stylelora.cli.reference [PAGE]`
rewrites the tables between the `options-train`, `-tune`, `-serve`, `-generate`, `-grid` and `-reg-images` markers of
docs/reference/options.md; tests/test_docs.py checks that the page holds what this builds."""

from __future__ import annotations

import sys
from pathlib import Path

from ..files import write_atomically
from ..options import options_markdown
from ..paint.reg_images import RegImagesConfig
from ..paint.request import GenerateConfig, GridConfig
from ..serve.config import ServeConfig
from ..train.config import TrainConfig
from ..train.settings import presets_markdown
from ..tune.space import TuneConfig

PAGE = Path("docs") / "reference" / "options.md"


def sections() -> dict[str, str]:
    """The generated text of each marked section, by marker name."""
    return {"options-train": options_markdown(TrainConfig), "options-tune": options_markdown(TuneConfig),
            "options-serve": options_markdown(ServeConfig), "options-generate": options_markdown(GenerateConfig),
            "options-grid": options_markdown(GridConfig), "options-reg-images": options_markdown(RegImagesConfig),
            "presets": presets_markdown()}


def section_of(text: str, name: str) -> str:
    return text.split(f"<!-- {name}:start -->\n", 1)[1].split(f"<!-- {name}:end -->", 1)[0]


def rewrite(page: Path) -> None:
    text = page.read_text()
    for name, body in sections().items():
        text = text.replace(f"<!-- {name}:start -->\n{section_of(text, name)}<!-- {name}:end -->",
                            f"<!-- {name}:start -->\n{body}<!-- {name}:end -->")
    write_atomically(page, text.encode())


if __name__ == "__main__":
    rewrite(Path(sys.argv[1]) if len(sys.argv) > 1 else PAGE)
