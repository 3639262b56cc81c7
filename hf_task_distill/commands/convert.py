"""``hf-task-distill convert``: bring your own checkpoint (see ``models.conversion``).

    hf-task-distill convert --architecture tf_efficientnet_lite0 \\
        --weights efficientnet-lite0.pth --match_by_order --output_dir models/lite0
"""

from __future__ import annotations

import argparse

from . import TOOL_COMMANDS


def build_parser() -> argparse.ArgumentParser:
    """The ``hf-task-distill convert`` parser (``--architecture``, ``--weights``, ``--output_dir``...).

    Returns:
        `argparse.ArgumentParser`: the parser.
    """
    parser = argparse.ArgumentParser(
        prog="hf-task-distill convert",
        description=TOOL_COMMANDS["convert"]
        + " Use the folder as --teacher, --student (with --pretrained_student) or with "
        'transformers/timm (timm.create_model("local-dir:<folder>", pretrained=True)).',
    )
    parser.add_argument("--architecture", required=True, help="timm model name, e.g. tf_efficientnet_lite0")
    parser.add_argument("--weights", required=True, help="the weights file (.safetensors, .pth, .pt, .bin)")
    parser.add_argument("--output_dir", "--output-dir", required=True, help="the model folder to write")
    parser.add_argument(
        "--key_map",
        "--key-map",
        nargs="+",
        default=[],
        metavar="OLD=NEW",
        help="rename key prefixes before matching by name (an empty NEW drops the prefix: backbone.=)",
    )
    parser.add_argument(
        "--match_by_order",
        "--match-by-order",
        action="store_true",
        help="match tensors by position and shape, for a file from another implementation of the network",
    )
    parser.add_argument(
        "--label_names",
        "--label-names",
        metavar="FILE",
        help="text file with the head's class names, one per line (default: ImageNet's for 1000 classes)",
    )
    parser.add_argument(
        "--input_size", "--input-size", type=int, metavar="PX", help="square input size the weights expect"
    )
    parser.add_argument(
        "--mean", type=float, nargs=3, metavar="X", help="per-channel mean for pixels in [0, 1]"
    )
    parser.add_argument(
        "--std", type=float, nargs=3, metavar="X", help="per-channel std for pixels in [0, 1]"
    )
    parser.add_argument("--interpolation", choices=["bilinear", "bicubic", "nearest"], help="resize filter")
    parser.add_argument(
        "--crop_pct", "--crop-pct", type=float, metavar="X", help="centre-crop fraction at evaluation"
    )
    return parser


def run(args: argparse.Namespace) -> str:
    """Convert as ``args`` says; returns the lines to print. Raises ``ValueError`` for bad flags."""
    from ..models.conversion import convert_timm_checkpoint

    key_map = {}
    for item in args.key_map:
        if "=" not in item:
            raise ValueError(f"--key_map takes OLD=NEW pairs, got '{item}'")
        old, new = item.split("=", 1)
        key_map[old] = new
    names = None
    if args.label_names:
        with open(args.label_names, encoding="utf-8") as file:
            names = [line.strip() for line in file if line.strip()]
    overrides = {
        key: value
        for key, value in {
            "input_size": (3, args.input_size, args.input_size) if args.input_size else None,
            "mean": tuple(args.mean) if args.mean else None,
            "std": tuple(args.std) if args.std else None,
            "interpolation": args.interpolation,
            "crop_pct": args.crop_pct,
        }.items()
        if value is not None
    }
    folder = convert_timm_checkpoint(
        args.architecture,
        args.weights,
        args.output_dir,
        key_map=key_map,
        match_by_order=args.match_by_order,
        label_names=names,
        pretrained_cfg=overrides,
    )
    return (
        f"wrote {folder}: {args.architecture} with the weights of {args.weights}\n"
        f"use it as --teacher {folder}, or --student {folder} --pretrained_student"
    )
