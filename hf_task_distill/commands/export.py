"""``hf-task-distill export``: write a saved student in other formats (see ``hf_task_distill.export``).

hf-task-distill export runs/my-run/finetune/model --formats onnx onnx-int8 --dataset my-photos/
"""

from __future__ import annotations

import argparse

from . import TOOL_COMMANDS


def build_parser() -> argparse.ArgumentParser:
    """The ``hf-task-distill export`` parser (``FOLDER``, ``--formats``, ``--dataset``, ``--overwrite``...).

    Returns:
        `argparse.ArgumentParser`: the parser.
    """
    parser = argparse.ArgumentParser(
        prog="hf-task-distill export",
        description=TOOL_COMMANDS["export"]
        + " onnx formats check parity against PyTorch and time both on this CPU (onnx/export.json).",
    )
    parser.add_argument("folder", help="the student's model folder (a run's finetune/model)")
    parser.add_argument(
        "--formats", nargs="+", default=["onnx"], help="export formats (onnx, onnx-int8, safetensors)"
    )
    parser.add_argument(
        "--output_dir", "--output-dir", help="where the files go (default: the student's folder)"
    )
    parser.add_argument(
        "--dataset",
        help="evaluation images for the parity check (a task name, folder or Hub dataset; its test "
        "split, else validation); default seeded random pixels",
    )
    parser.add_argument(
        "--calibration",
        help="images static int8 (onnx-int8) is calibrated on: a transfer set or image folder / Hub "
        "dataset; default the --dataset task's train split; with neither, int8 is dynamic",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an export made from other weights")
    return parser


def run(args: argparse.Namespace) -> str:
    """Export as ``args`` says; returns the files written and, for onnx, the measured parity and
    latency. Raises ``ValueError`` for a bad folder, format or failed parity."""
    import os

    from ..export import export_student
    from ..files import read_json

    images = None
    if args.dataset:
        from ..data import load_target_task

        images = load_target_task(args.dataset)
    calibration = None
    if args.calibration:
        from ..data import load_image_dataset

        try:
            calibration = load_image_dataset(args.calibration)
        except (ValueError, FileNotFoundError) as err:
            raise ValueError(
                f"--calibration '{args.calibration}' holds no images it can read: {err}"
            ) from err
        if len(calibration) == 0:
            raise ValueError(f"--calibration '{args.calibration}' holds no images")
    written = export_student(
        args.folder,
        args.formats,
        args.output_dir,
        images=images,
        calibration=calibration,
        overwrite=args.overwrite,
    )
    lines = [f"{name}: {', '.join(paths)}" for name, paths in written.items()]
    records = {os.path.dirname(p) for paths in written.values() for p in paths if p.endswith("export.json")}
    for folder in sorted(records):
        lines += summary_lines(read_json(os.path.join(folder, "export.json")))
    return "\n".join(lines)


def summary_lines(record: dict) -> list[str]:
    """The parity and latency lines of an ``onnx/export.json`` record."""
    parity, latency = record["parity"], record["latency"]
    fp32 = parity["fp32"]
    lines = [
        f"parity on {parity['sample']['images']} images ({parity['sample']['source']}): max |Δlogit| "
        f"{fp32['max_abs_diff']:.2g}, argmax agreement {100 * fp32['argmax_agreement']:.1f}%"
    ]
    if "int8" in parity:
        change = parity["int8"].get("accuracy_change_points")
        how = record.get("quantization", {})
        lines.append(
            f"int8 ({how.get('method', 'dynamic')}): argmax agreement with fp32 {100 * parity['int8']['argmax_agreement']:.1f}%"
            + (f", accuracy change {change:+.2f} points" if change is not None else "")
        )
    for key, rows in latency.items():
        for name, row in rows.items():
            if name != "pytorch":
                lines.append(
                    f"{key}: {name} {row['median_ms']:.3g} ms median ({row['images_per_s']:.0f} img/s), "
                    f"{row['speedup_vs_pytorch']:.2f}x PyTorch eager ({rows['pytorch']['median_ms']:.3g} ms)"
                )
    return lines
