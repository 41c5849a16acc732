"""The `stylelora` command. A thin layer: parse flags into a config, call the library, turn errors into exit codes."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Set before anything below imports transformers or diffusers, which read them once, at import: no warnings about
# optional image backends (torchvision) in a command's output.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

from ..errors import StyleloraError  # noqa: E402
from ..options import add_arguments  # noqa: E402
from ..paint.reg_images import RegImagesConfig  # noqa: E402
from ..paint.request import GenerateConfig, GridConfig  # noqa: E402
from ..train.config import validate  # noqa: E402
from ..train.settings import config_toml  # noqa: E402
from .queue import add_queue_parser, run_queue_command  # noqa: E402
from .serve import add_serve_parser, run_serve  # noqa: E402
from .train_args import add_train_arguments, train_config_of  # noqa: E402
from .stop import StopRequest  # noqa: E402
from .tune import add_suggest_parser, add_tune_parser, run_suggest, run_tune  # noqa: E402


EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def add_train_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("train", help="train a style adapter from a folder of captioned images",
                            description="Train a LoRA style adapter from a folder of captioned images.")
    add_train_arguments(p)
    p.add_argument("--print-config", action="store_true", default=None,  # None: not a setting when left out
                   help="print the settings this run would use, as a --config file, and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_train(args: argparse.Namespace) -> int:
    from ..errors import TrainingInterrupted
    from ..train.loop import train

    config = train_config_of(args)
    if args.print_config:
        print(config_toml(validate(config)), end="")
        return 0
    stop = StopRequest()
    try:
        with stop.on_signals():
            result = train(config, should_stop=stop, progress_bar=not args.quiet,
                           log=lambda m: print(m, file=sys.stderr))
    except TrainingInterrupted as stopped:
        print(f"stylelora: {stopped}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not result.is_main:
        return 0
    print(f"Adapter written to {result.adapter_path}")
    trained = result.trained or config
    print(f"{result.steps} steps in {result.seconds:.0f}s, final loss {result.loss:.4f}, "
          f"rank {trained.rank}, alpha {trained.effective_alpha:g}, base {trained.base}")
    if result.measured:
        print(f"Kept step {result.kept_step} ({config.keep_step}), {result.kept_measures()}; {result.stop_reason}")
    return 0


def add_generate_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("generate", help="paint with a base model and weighted style adapters",
                            description="Generate images with any number of style adapters, each at its own weight.")
    p.add_argument("prompt")
    add_arguments(p, GenerateConfig)


def run_generate(args: argparse.Namespace) -> int:
    from ..paint.generate import generate

    flags = {k: v for k, v in vars(args).items() if v is not None and k != "command"}
    config = GenerateConfig(**(flags | {"loras": tuple(flags.get("loras", ()))}))
    for path in generate(config):
        print(path)
    return 0


def add_grid_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("grid", help="one comparison image: prompts or adapter B's weight against adapter A's",
                            description="An X/Y grid: columns are adapter A's weights; rows are the prompts, or "
                                        "adapter B's weights with --lora-b. Every cell uses the same seed.")
    p.add_argument("prompts", nargs="+")
    add_arguments(p, GridConfig)


def run_grid(args: argparse.Namespace) -> int:
    from ..paint.grid import make_grid, parse_weights

    flags = {k: v for k, v in vars(args).items() if v is not None and k != "command"}
    for name in ("weights", "weights_b"):
        if name in flags:
            flags[name] = parse_weights(flags[name], "--" + name.replace("_", "-"))
    print(make_grid(GridConfig(**(flags | {"prompts": tuple(args.prompts)}))))
    return 0


def add_reg_images_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("reg-images", help="paint regularisation (class) images with the base, for --reg-data",
                            description="Paint class images with the base alone, each with its prompt as its caption, "
                                        "for `stylelora train --reg-data DIR`. Images already there are kept.")
    p.add_argument("prompts", nargs="*", help="class prompts, e.g. \"a circle\"")
    add_arguments(p, RegImagesConfig)


def run_reg_images(args: argparse.Namespace) -> int:
    from ..paint.reg_images import write_reg_images

    flags = {k: v for k, v in vars(args).items() if v is not None and k != "command"}
    config = RegImagesConfig(**(flags | {"prompts": tuple(args.prompts)}))
    written = write_reg_images(config, say=lambda m: print(m, file=sys.stderr))
    print(f"Wrote {len(written)} class images with captions to {config.out}; train with --reg-data {config.out}")
    return 0


def add_adapter_tool_parsers(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("merge", help="merge weighted adapters into one",
                            description="Merge adapters: FILE:WEIGHT ... into one adapter (cat: exact; svd: rank R).")
    p.add_argument("adapters", nargs="+", metavar="FILE[:WEIGHT]")
    p.add_argument("-o", "--out", type=Path, required=True, help="output .safetensors file (or folder with --into-base)")
    p.add_argument("--method", default="cat", metavar="METHOD",
                   help="cat (exact, ranks add up), svd (the exact sum at rank R), or ties, dare-linear, dare-ties, "
                        "magnitude-prune (peft's rules on each module's change, at --density), klora (K-LoRA's "
                        "per-module choice); at rank R, or the sum of the ranks")
    p.add_argument("--rank", type=int, help="target rank for --method svd (and the merge rules)")
    p.add_argument("--density", type=float,
                   help="ties, dare-*, magnitude-prune: the share of each change kept; klora: the share of the "
                        "entries that choose (0.5 is usual)")
    p.add_argument("--seed", type=int, default=0, help="dare-*: the seed of the random drop (0)")
    p.add_argument("--into-base", action="store_true", help="write a full base model folder with the blend fused in")
    p.add_argument("--base", default="mini", help="base model for --into-base, and for --method svd of DoRA, LoHa or LoKr files (mini)")

    p = commands.add_parser("convert", help="convert an adapter between kohya, diffusers and peft layouts")
    p.add_argument("file", type=Path)
    p.add_argument("--to", choices=("kohya", "diffusers", "peft"), required=True)
    p.add_argument("-o", "--out", type=Path, required=True, help="output file (a folder for peft)")
    p.add_argument("--drop-biases", action="store_true",
                   help="leave out trained biases (diff_b): diffusers' load_lora_weights refuses a file that has any, "
                        "and loads the weights alone")

    p = commands.add_parser("resize", help="reduce an adapter's rank per module (SVD, or a DyLoRA's own truncation)",
                            description="Reduce an adapter's rank: to --rank R, or per module with --dynamic "
                                        "(fro=S keeps the share S of each module's norm; ratio=R keeps singular values "
                                        "of at least the largest / R), as kohya's resize_lora.py does.")
    p.add_argument("file", type=Path)
    p.add_argument("-o", "--out", type=Path, required=True, help="output .safetensors file")
    p.add_argument("--rank", type=int, help="the rank; with --dynamic, the largest a module may keep")
    p.add_argument("--dynamic", help="fro=0.9 or ratio=4: each module's own rank")
    p.add_argument("--base", default="mini", help="base model, read for DoRA, LoHa and LoKr files (mini)")

    p = commands.add_parser("inspect", help="show what an adapter file holds")
    p.add_argument("file", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--ranks", action="store_true", help="each module's effective rank (singular values holding 90/95/"
                                                        "99%% of its change's energy), and whether a smaller --rank would have done")
    p.add_argument("--base", help="the base the file is for: refused, naming both, if it is of another family "
                                  "(SDXL vs SD1.x); with --ranks, read for DoRA, LoHa and LoKr files (mini)")


def run_merge(args: argparse.Namespace) -> int:
    from ..paint.merge_job import MergeConfig, merge

    result = merge(MergeConfig(tuple(args.adapters), args.out, args.method, args.rank, args.into_base, args.base,
                               args.density, args.seed))
    if result.relative_error is not None:
        rank = f"rank {args.rank}" if args.rank else "the sum of the ranks"
        print(f"{args.method} at {rank}: relative error of the merged deltas {result.relative_error:.6f}")
    print(f"Merged {len(args.adapters)} adapters into {result.path}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from ..adapters.formats import read_lora, without_biases, write_lora

    weights, metadata, kind = read_lora(args.file)
    if args.drop_biases:
        weights, dropped = without_biases(weights)
        print(f"Left out {dropped} trained biases (diff_b): the file paints with its weight changes alone"
              if dropped else "The file has no trained biases (diff_b) to leave out")
    write_lora(weights, args.to, args.out, metadata)
    print(f"Converted {args.file} ({kind}) to {args.to}: {args.out}")
    return 0


def run_resize(args: argparse.Namespace) -> int:
    from ..adapters.resize import ResizeConfig, resize

    result = resize(ResizeConfig(args.file, args.out, args.rank, args.dynamic, args.base))
    ranks = ", ".join(f"{count} at rank {rank}" for rank, count in result.ranks.items())
    if result.method == "svd":
        print(f"svd: relative error {result.relative_error:.6f}; modules: {ranks}")
    else:  # a DyLoRA truncation is a trained adapter of its own, not an approximation of the full rank
        print(f"dylora truncation: its change differs from the full-rank adapter's by {result.relative_error:.6f} "
              f"(relative Frobenius norm); modules: {ranks}")
    print(f"Resized {args.file} into {result.path}")
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from ..adapters.inspection import as_json, as_text, check_fits_base, describe, effective_ranks, ranks_as_text

    if args.base is not None:
        check_fits_base(args.file, args.base)
    if args.ranks:
        info = effective_ranks(args.file, args.base or "mini")
        print(as_json(info) if args.json else ranks_as_text(info))
        return 0
    info = describe(args.file)
    print(as_json(info) if args.json else as_text(info))
    return 0


def run_ui(args: argparse.Namespace, rest: list[str]) -> int:
    import importlib

    # The UI (the repository's ui/ folder, installed as stylelora.ui) is started by name: nothing below the CLI
    # imports it.
    return importlib.import_module("stylelora.ui.app").main(rest)


def add_sample_data_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("sample-data", help="write the sample style folders (stripes, dots, pastel) to try it on",
                            description="Write the three sample style folders, 36 captioned images each, drawn by "
                                        "the miniature world: DIR/stripes, DIR/dots and DIR/pastel.")
    p.add_argument("folder", type=Path, help="where to write them, e.g. datasets")


def run_sample_data(args: argparse.Namespace) -> int:
    from ..mini.samples import COUNT, write_samples

    for folder in write_samples(args.folder):
        print(f"wrote {COUNT} images to {folder}")
    print(f"Train on one: stylelora train {args.folder / 'stripes'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stylelora", description="Teach Stable Diffusion a style with LoRA.")
    commands = parser.add_subparsers(dest="command", required=True)
    add_train_parser(commands)
    add_generate_parser(commands)
    add_grid_parser(commands)
    add_reg_images_parser(commands)
    add_adapter_tool_parsers(commands)
    add_tune_parser(commands)
    add_suggest_parser(commands)
    add_serve_parser(commands)
    add_sample_data_parser(commands)
    add_queue_parser(commands)
    commands.add_parser("ui", help="open the web UI (see `stylelora ui --help`)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ui"]:
        return run_ui(argparse.Namespace(), argv[1:])
    args = build_parser().parse_args(argv)
    try:
        runners = {"train": run_train, "generate": run_generate, "grid": run_grid, "merge": run_merge,
                   "convert": run_convert, "resize": run_resize, "inspect": run_inspect, "tune": run_tune,
                   "suggest": run_suggest, "serve": run_serve, "sample-data": run_sample_data,
                   "reg-images": run_reg_images, "queue": run_queue_command}
        return runners[args.command](args)
    except StyleloraError as error:
        print(f"stylelora: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C before training started: nothing to save
        print("stylelora: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as error:  # the disk, not the user's input: still one line, never a traceback
        where = f"{error.filename}: " if error.filename else ""
        print(f"stylelora: error: {where}{error.strerror or error}", file=sys.stderr)
        return 1

