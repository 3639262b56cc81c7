"""Build a teacher cache of the colour transfer set; with --slow, pause per batch so a test can kill it.
With --dense, the teacher is a tiny SegFormer and the cache stores its top-2 [C, h, w] logits.

Each process writes ``calls-<rank>.json`` next to the cache: how many teacher forward passes it ran
and how many rows the cache it got back holds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import conftest  # noqa: E402,F401  (offline Hub settings)
from conftest import make_colour_dataset, tiny_dinov2, tiny_processor  # noqa: E402

from hf_task_distill.data import ViewSpec  # noqa: E402
from hf_task_distill.devices import end_processes  # noqa: E402
from hf_task_distill.teacher_cache import TeacherCacheConfig, build_teacher_cache  # noqa: E402

CONFIG = TeacherCacheConfig(num_views=3, shard_size=16, batch_size=12, view_seed=7)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--slow", action="store_true")
    parser.add_argument("--dense", action="store_true")
    cli = parser.parse_args()
    config, dense = CONFIG, {}
    if cli.dense:
        from test_segmentation_cache import tiny_segformer

        teacher = tiny_segformer()
        config = dataclasses.replace(CONFIG, top_k=2, dense_grid=4)
        dense = {"task_type": "image-segmentation"}
    else:
        teacher = tiny_dinov2()
    calls = []
    teacher.register_forward_pre_hook(lambda module, args: calls.append(1))
    if cli.slow:
        teacher.register_forward_pre_hook(lambda module, args: time.sleep(0.15))
    cache = build_teacher_cache(
        teacher,
        make_colour_dataset(160, seed=2, labelled=False),
        cli.output_dir,
        config=config,
        teacher_view=ViewSpec.from_image_processor(tiny_processor()),
        progress=False,
        **dense,
    )
    from hf_task_distill.devices import process_state

    state = process_state()
    with open(os.path.join(cli.output_dir, f"calls-{state.process_index}.json"), "w") as f:
        json.dump({"calls": len(calls), "rows": len(cache), "num_processes": state.num_processes}, f)


if __name__ == "__main__":
    main()
    end_processes()
