"""The `stylelora` command. A thin layer: parse flags into a config, call the library, turn errors into exit codes."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import StyleloraError
from ..model.quantize import QUANTIZE_HELP, QUANTIZE_MODES
from ..train.config import LR_SCHEDULES, PRECISIONS, from_dict, load_toml
from .serve import add_serve_parser, run_serve
from .stop import StopRequest
from .tune import add_suggest_parser, add_tune_parser, run_suggest, run_tune


EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def add_train_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("train", help="train a style adapter from a folder of captioned images",
                            description="Train a LoRA style adapter from a folder of captioned images.")
    p.add_argument("data", nargs="?", help="folder of images (png, jpg, webp, bmp; subfolders too)")
    p.add_argument("--config", type=Path, help="TOML file with the same options as these flags (flags win)")
    p.add_argument("--out", type=Path, help="output folder, or a .safetensors file path (default adapters/<name>)")
    p.add_argument("--name", help="adapter name (default: the output file or image folder name)")
    p.add_argument("--base", help="'mini' (built in, default), a hub id, a diffusers folder or a .safetensors checkpoint")
    p.add_argument("--auto", action="store_true", default=None,
                   help="rank, alpha, learning rate and steps from `stylelora suggest` where you leave them at their defaults")
    g = p.add_argument_group("captions")
    g.add_argument("--caption", help="caption for images that have none")
    g.add_argument("--trigger", help="trigger phrase put before every caption")
    g.add_argument("--caption-dropout", type=float, help="rate of steps trained on an empty caption (0)")
    g.add_argument("--shuffle-tags", action=argparse.BooleanOptionalAction, default=None, help="shuffle comma-separated tags")
    g.add_argument("--keep-tags", type=int, help="leading tags kept in place when shuffling (0)")
    g = p.add_argument_group("images")
    g.add_argument("--resolution", type=int, help="training size in pixels, a multiple of 8 (default: the base's native size)")
    g.add_argument("--random-crop", action=argparse.BooleanOptionalAction, default=None, help="random instead of center crops")
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None, help="random horizontal flips")
    g.add_argument("--buckets", action=argparse.BooleanOptionalAction, default=None,
                   help="aspect-ratio buckets, so no image is cropped to a square (on); --no-buckets: centre squares")
    g.add_argument("--bucket-step", type=int, help="bucket sides are multiples of this (64; 8 on the built-in mini base)")
    g.add_argument("--min-bucket", type=int, help="shortest bucket side in pixels (half the resolution)")
    g.add_argument("--max-bucket", type=int, help="longest bucket side in pixels (twice the resolution)")
    g.add_argument("--no-upscale", action="store_true", default=None,
                   help="never enlarge an image to fill a bucket: each trains at its own size, rounded down to the step")
    g = p.add_argument_group("adapter")
    g.add_argument("--method", help="lora, dora, loha, lokr, adalora or dylora (lora); DoRA is written with the "
                                    "magnitude per input column, as AUTOMATIC1111 and ComfyUI apply it")
    g.add_argument("--rank", type=int, help="LoRA rank (4)")
    g.add_argument("--alpha", type=float, help="LoRA alpha (default: the rank, so the scale is 1)")
    g.add_argument("--dropout", type=float, help="LoRA dropout (0)")
    g.add_argument("--target-modules", type=_csv, help="UNet module-name suffixes (to_q,to_k,to_v,to_out.0)")
    g.add_argument("--targets", help="UNet module preset instead of --target-modules: attn (the default), attn-mlp "
                                     "(+ feed-forward), all-linear (+ proj_in/out, time embedding), all (+ ResNet "
                                     "convolutions: LoCon)")
    g.add_argument("--conv-rank", type=int, help="rank of the 3x3 convolutions with --targets all (--rank)")
    g.add_argument("--conv-alpha", type=float, help="alpha of the 3x3 convolutions with --targets all (the conv rank)")
    g.add_argument("--target-rank", type=int, help="AdaLoRA: the average rank it prunes down to, from --rank (half of --rank)")
    g.add_argument("--export-rank", type=int, help="DyLoRA: the rank the adapter file holds, 1 to --rank (--rank)")
    g.add_argument("--train-bias", action=argparse.BooleanOptionalAction, default=None,
                   help="lora, dora: the adapted layers' biases train too; the file carries them as diff_b, which "
                        "ComfyUI applies (AUTOMATIC1111 and diffusers apply the weights only)")
    g.add_argument("--train-text-encoder", action=argparse.BooleanOptionalAction, default=None,
                   help="also adapt the CLIP text encoder (q/k/v/out_proj)")
    g.add_argument("--text-encoder-targets", type=_csv,
                   help="text-encoder module suffixes (q_proj,k_proj,v_proj,out_proj); on SD2, AUTOMATIC1111 "
                        "applies the text-encoder part only when all four are adapted")
    g.add_argument("--rslora", action=argparse.BooleanOptionalAction, default=None,
                   help="rank-stabilised LoRA: scale alpha/sqrt(rank) instead of alpha/rank (the file stores "
                        "alpha*sqrt(rank), so every loader applies the same delta)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--learning-rate", "--lr", type=float, help="UNet LoRA learning rate (1e-4; 2e-3 on the built-in mini base)")
    g.add_argument("--loraplus-ratio", type=float,
                   help="LoRA+: the B (up) matrices learn R times faster than A; 16 is the paper's usual value (0 = off)")
    g.add_argument("--text-encoder-lr", type=float, help="text-encoder LoRA learning rate (5e-5)")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, help="constant, cosine or linear (constant)")
    g.add_argument("--warmup-steps", type=int, help="linear warmup steps (0)")
    g.add_argument("--max-steps", type=int, help="optimizer steps to train (default 800 unless --epochs)")
    g.add_argument("--epochs", type=int, help="passes over the images, instead of --max-steps")
    g.add_argument("--batch-size", type=int, help="images per step per device (4)")
    g.add_argument("--grad-accumulation", type=int, help="batches accumulated per optimizer step (1)")
    g.add_argument("--max-grad-norm", type=float, help="gradient clipping norm, 0 = off (1.0)")
    g.add_argument("--weight-decay", type=float, help="AdamW weight decay (0.01)")
    g.add_argument("--min-snr-gamma", type=float, help="min-SNR loss weighting, 0 = off; 5 is usual (0)")
    g.add_argument("--noise-offset", type=float, help="noise offset, 0 = off; 0.05 is usual (0)")
    g.add_argument("--seed", type=int, help="random seed (0)")
    g = p.add_argument_group("speed")
    g.add_argument("--precision", choices=PRECISIONS,
                   help="auto (GPU: bf16, or fp16; CPU: bf16 for UNets of 50M parameters or more where a cached "
                        "probe measured it to run and to be faster, else fp32), no (fp32), fp16 or bf16")
    g.add_argument("--quantize-base", choices=QUANTIZE_MODES, help=QUANTIZE_HELP)
    g.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="trade compute for memory")
    g.add_argument("--cache-latents", action=argparse.BooleanOptionalAction, default=None,
                   help="encode each image once with the VAE (on)")
    g = p.add_argument_group("checkpoints and samples")
    g.add_argument("--save-every", type=int, help="write a resumable checkpoint every N steps (0 = off)")
    g.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None,
                   help="continue from the latest checkpoint in the output folder")
    g.add_argument("--sample-every", type=int, help="render preview images every N steps (0 = off)")
    g.add_argument("--sample-prompt", dest="sample_prompts", action="append",
                   help="prompt for previews (repeatable; none: the folder's first two captions)")
    g.add_argument("--log-every", type=int, help="write metrics every N steps (1)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("knowing when to stop")
    g.add_argument("--validation-split", type=float, help="fraction of the images held out to measure a validation "
                   "loss, at least 1 image, chosen by --seed (0 = off)")
    g.add_argument("--validation-data", type=Path, help="a separate folder of held-out images instead of a split")
    g.add_argument("--validate-every", type=int, help="validate every N steps (a twentieth of the run)")
    g.add_argument("--early-stop", type=int, metavar="PATIENCE",
                   help="stop after PATIENCE validations without improvement (0 = never)")
    g.add_argument("--min-delta", type=float, help="the least drop of the validation loss that counts as improvement (0)")
    g.add_argument("--keep", choices=("best", "last"),
                   help="which step's adapter becomes the file (best with validation, else last)")
    g.add_argument("--ema-decay", type=float, help="exponential moving average of the adapter weights, "
                   "validated and saved instead of them, e.g. 0.99 (0 = off)")
    g.add_argument("--preserve-prompts", type=Path, metavar="FILE", help="prompts (one a line) on which the "
                   "target is the base's own prediction, adapter off: keeps the style out of them")
    g.add_argument("--preserve-weight", type=float, help="weight of that preservation loss (1)")


def run_train(args: argparse.Namespace) -> int:
    from ..errors import TrainingInterrupted
    from ..train.loop import train

    values = load_toml(args.config) if args.config else {}
    flags = {k: v for k, v in vars(args).items() if v is not None and k not in ("command", "config", "quiet")}
    config = from_dict(values | flags)
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
    print(f"{result.steps} steps in {result.seconds:.0f}s, final loss {result.loss:.4f}, "
          f"rank {config.rank}, alpha {config.effective_alpha:g}, base {config.base}")
    if result.validation_loss is not None:
        base = f" (the base alone: {result.base_validation_loss:.5f})" if result.base_validation_loss is not None else ""
        print(f"Kept step {result.kept_step} ({config.keep_step}), validation loss {result.validation_loss:.5f}{base}; "
              f"{result.stop_reason}")
    return 0


def add_generate_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("generate", help="paint with a base model and weighted style adapters",
                            description="Generate images with any number of style adapters, each at its own weight.")
    p.add_argument("prompt")
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:WEIGHT]",
                   help="adapter and weight, e.g. a.safetensors:0.7 or a.safetensors:unet=0.8,te=0.5 (repeatable)")
    p.add_argument("--base", default="mini", help="'mini' (default), a hub id, a diffusers folder or a .safetensors file")
    p.add_argument("--negative", default="", help="negative prompt")
    p.add_argument("-n", "--count", type=int, default=4, help="number of images (4)")
    p.add_argument("--steps", type=int, default=30, help="denoising steps (30)")
    p.add_argument("--cfg", type=float, default=7.5, help="classifier-free guidance scale (7.5)")
    p.add_argument("--seed", type=int, default=1, help="seed of the first image; image i uses seed + i (1)")
    p.add_argument("--size", type=int, help="image size in pixels (default: the base's native size)")
    p.add_argument("--width", type=int, help="image width in pixels, a multiple of 8 (--size, or the base's native size)")
    p.add_argument("--height", type=int, help="image height in pixels, a multiple of 8 (--size, or the base's native size)")
    p.add_argument("--scheduler", default="dpm++", choices=("ddim", "euler", "dpm++"), help="sampler (dpm++)")
    p.add_argument("--out", type=Path, default=Path("outputs"), help="folder for the PNG files (outputs)")
    p.add_argument("--quantize-base", default="none", choices=QUANTIZE_MODES, help=QUANTIZE_HELP)
    p.add_argument("--blend", default="merge", choices=("merge", "switch", "composite"),
                   help="merge: weighted sum, fused (1x cost); switch: one adapter per step in turn (1x); "
                        "composite: every adapter's prediction averaged each step (N x cost)")


def run_generate(args: argparse.Namespace) -> int:
    from ..paint.generate import GenerateConfig, generate

    config = GenerateConfig(prompt=args.prompt, loras=tuple(args.lora), base=args.base, negative=args.negative,
                            count=args.count, steps=args.steps, cfg=args.cfg, seed=args.seed, size=args.size,
                            width=args.width, height=args.height,
                            scheduler=args.scheduler, out=args.out, blend=args.blend, quantize_base=args.quantize_base)
    for path in generate(config):
        print(path)
    return 0


def add_grid_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("grid", help="one comparison image: prompts or adapter B's weight against adapter A's",
                            description="An X/Y grid: columns are adapter A's weights; rows are the prompts, or "
                                        "adapter B's weights with --lora-b. Every cell uses the same seed.")
    p.add_argument("prompts", nargs="+")
    p.add_argument("--lora", required=True, help="adapter A")
    p.add_argument("--weights", default="0,0.25,0.5,0.75,1", help="A's weights across (0,0.25,0.5,0.75,1)")
    p.add_argument("--lora-b", help="adapter B: rows become B's weights")
    p.add_argument("--weights-b", default="", help="B's weights down, e.g. 0,0.5,1")
    p.add_argument("--base", default="mini")
    p.add_argument("--negative", default="")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--cfg", type=float, default=7.5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--scheduler", default="dpm++", choices=("ddim", "euler", "dpm++"))
    p.add_argument("--quantize-base", default="none", choices=QUANTIZE_MODES, help=QUANTIZE_HELP)
    p.add_argument("-o", "--out", type=Path, default=Path("outputs/grid.png"))


def run_grid(args: argparse.Namespace) -> int:
    from ..paint.grid import GridConfig, make_grid, parse_weights

    config = GridConfig(tuple(args.prompts), args.lora, parse_weights(args.weights, "--weights"), args.out,
                        args.lora_b, parse_weights(args.weights_b, "--weights-b") if args.lora_b else (),
                        args.base, args.negative, args.steps, args.cfg, args.seed, args.scheduler, args.quantize_base)
    print(make_grid(config))
    return 0


def add_adapter_tool_parsers(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("merge", help="merge weighted adapters into one",
                            description="Merge adapters: FILE:WEIGHT ... into one adapter (cat: exact; svd: rank R).")
    p.add_argument("adapters", nargs="+", metavar="FILE[:WEIGHT]")
    p.add_argument("-o", "--out", type=Path, required=True, help="output .safetensors file (or folder with --into-base)")
    p.add_argument("--method", choices=("cat", "svd"), default="cat", help="cat (exact, ranks add up) or svd (rank R)")
    p.add_argument("--rank", type=int, help="target rank for --method svd")
    p.add_argument("--into-base", action="store_true", help="write a full base model folder with the blend fused in")
    p.add_argument("--base", default="mini", help="base model for --into-base, and for --method svd of DoRA, LoHa or LoKr files (mini)")

    p = commands.add_parser("convert", help="convert an adapter between kohya, diffusers and peft layouts")
    p.add_argument("file", type=Path)
    p.add_argument("--to", choices=("kohya", "diffusers", "peft"), required=True)
    p.add_argument("-o", "--out", type=Path, required=True, help="output file (a folder for peft)")

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

    result = merge(MergeConfig(tuple(args.adapters), args.out, args.method, args.rank, args.into_base, args.base))
    if result.relative_error is not None:
        print(f"svd rank {args.rank}: relative error of the merged deltas {result.relative_error:.6f}")
    print(f"Merged {len(args.adapters)} adapters into {result.path}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from ..adapters.formats import read_lora, write_lora

    weights, metadata, kind = read_lora(args.file)
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
    add_adapter_tool_parsers(commands)
    add_tune_parser(commands)
    add_suggest_parser(commands)
    add_serve_parser(commands)
    add_sample_data_parser(commands)
    commands.add_parser("ui", help="open the web UI (see `stylelora ui --help`)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")  # no warnings about optional image backends
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ui"]:
        return run_ui(argparse.Namespace(), argv[1:])
    args = build_parser().parse_args(argv)
    try:
        runners = {"train": run_train, "generate": run_generate, "grid": run_grid, "merge": run_merge,
                   "convert": run_convert, "resize": run_resize, "inspect": run_inspect, "tune": run_tune,
                   "suggest": run_suggest, "serve": run_serve, "sample-data": run_sample_data}
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

