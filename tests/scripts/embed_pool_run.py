"""Embed the themed test pool into a folder; with --slow, pause after each shard so a test can kill it."""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import conftest  # noqa: E402,F401  (offline Hub settings)
from conftest import make_themed_pool, tiny_encoder  # noqa: E402

from hf_task_distill.devices import end_processes  # noqa: E402
from hf_task_distill.retrieval import embed_pool  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--slow", action="store_true")
    cli = parser.parse_args()
    encoder = tiny_encoder()
    if cli.slow:
        call = encoder.__class__.__call__

        def slow_call(self, pixels):
            time.sleep(0.3)
            return call(self, pixels)

        encoder.__class__.__call__ = slow_call
    pool = make_themed_pool()["pool"]
    embed_pool(
        pool,
        encoder,
        cli.output_dir,
        shard_size=16,
        batch_size=8,
        process_index=0,
        num_processes=1,
        progress=False,
    )


if __name__ == "__main__":
    main()
    end_processes()
