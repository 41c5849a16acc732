"""The stylelora web UI: Train, Generate and Library tabs over the same library calls as the CLI.

This file only lays out the page and turns library results and errors into page messages;
training, blending and file checks all live in the `stylelora` package.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gradio as gr

from stylelora.adapters.library import library_stamp
from stylelora.model.cores import CoreShare
from stylelora.model.precision import bf16_support
from stylelora.ui.generate_tab import generate_tab
from stylelora.ui.library_tab import library_tab
from stylelora.ui.session import Session
from stylelora.ui.train_tab import train_tab
from stylelora.ui.tune_tab import tune_tab

MAX_UPLOAD = "50mb"


def build_app(workspace: Path, adapters: Path) -> gr.Blocks:
    session = Session(workspace, adapters)
    session.workspace.mkdir(parents=True, exist_ok=True)
    session.adapters.mkdir(parents=True, exist_ok=True)
    with gr.Blocks(title="stylelora") as app:
        gr.Markdown("# stylelora\nTeach Stable Diffusion a style from a few pictures, then paint with several styles.")
        with gr.Tabs() as tabs:
            with gr.Tab("Train", id="train"):
                form = train_tab(session)
            with gr.Tab("Generate", id="generate"):
                generate_rows, generate_outputs = generate_tab(session)
            with gr.Tab("Library", id="library"):
                library_listing, library_outputs = library_tab(session, form, tabs)
            with gr.Tab("Tune", id="tune"):
                tune_tab(session, form)
        follow_the_library(app, session, [(library_listing, library_outputs), (generate_rows, generate_outputs)])
    return app


def follow_the_library(app: gr.Blocks, session: Session, views: list[tuple]) -> None:
    """Each (fill, components) view of the adapter library is read when the page loads and again whenever the
    library changes on disk (a training ends, a file is imported or copied in), checked every two seconds."""
    seen = gr.State(None)
    outputs = [seen] + [component for _, components in views for component in components]
    timer = gr.Timer(2.0)

    def follow(last):
        stamp = library_stamp(session.adapters)
        if stamp == last:
            return [gr.skip()] * len(outputs)
        return [stamp] + [value for fill, _ in views for value in fill()]

    app.load(follow, [seen], outputs)
    timer.tick(follow, [seen], outputs, show_progress="hidden")


def launch(workspace: Path, adapters: Path, host: str = "127.0.0.1", port: int | None = None, share: bool = False,
           auth: tuple[str, str] | None = None, block: bool = True):
    app = build_app(workspace, adapters)
    app.queue(default_concurrency_limit=1)
    # show_error: an unforeseen failure shows its one-line message on the page, not a bare "Error"
    return app.launch(server_name=host, server_port=port, share=share, auth=auth, max_file_size=MAX_UPLOAD,
                      show_error=True,
                      allowed_paths=[str(workspace.resolve()), str(adapters.resolve())], prevent_thread_lock=not block,
                      quiet=not block)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stylelora ui", description="Open the stylelora web UI.")
    parser.add_argument("--workspace", type=Path, default=Path("stylelora-workspace"),
                        help="where uploads, thumbnails, prompts, paintings and tune studies go (default: %(default)s)")
    parser.add_argument("--adapters", type=Path, default=Path("adapters"),
                        help="the adapter library: trained adapters are saved here, and Generate and the Library "
                             "list the .safetensors files in it (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="make a public Gradio link (off by default)")
    parser.add_argument("--auth", help="user:password required to open the page")
    args = parser.parse_args(argv)
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    if args.auth and len(auth) != 2:
        parser.error("--auth takes user:password")
    bf16_support()  # probe (once per machine) before any kernel runs here, so a needed oneDNN cap takes hold
    with CoreShare(say=print):  # training and painting here share the cores with other stylelora processes
        launch(args.workspace, args.adapters, args.host, args.port, args.share, auth)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
