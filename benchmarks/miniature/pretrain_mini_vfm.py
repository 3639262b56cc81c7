"""Regenerate the shipped mini-VFM: pretrain it on rendered glyphs and write it with its card.

    python benchmarks/miniature/pretrain_mini_vfm.py --output_dir hf_task_distill/assets/mini-vfm

Every setting has the default the shipped weights were made with (``MiniVFMPretraining``); the card
and ``pretraining.json`` in the output folder record them with the validation accuracy reached.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from hf_task_distill.demo.miniature import MiniVFMPretraining, pretrain_mini_vfm  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True)
    for f in dataclasses.fields(MiniVFMPretraining):
        if f.name != "results":
            parser.add_argument(f"--{f.name}", type=type(f.default), default=f.default)
    cli = vars(parser.parse_args())
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    output_dir = cli.pop("output_dir")
    results = pretrain_mini_vfm(output_dir, MiniVFMPretraining(**cli))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
