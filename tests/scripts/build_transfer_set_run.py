"""Build the themed-pool transfer set (one or several processes) and write what came out."""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import conftest  # noqa: E402,F401  (offline Hub settings)
from conftest import make_themed_pool, tiny_encoder  # noqa: E402

from hf_task_distill.devices import end_processes, process_state  # noqa: E402
from hf_task_distill.retrieval import EmbeddingStore, RetrievalTransferSetBuilder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    cli = parser.parse_args()
    themed = make_themed_pool()
    builder = RetrievalTransferSetBuilder(tiny_encoder(), per_query_k=8, shard_size=16, batch_size=8)
    transfer, stats = builder.build(themed["pool"], themed["queries"], embeddings_dir=cli.output_dir)
    state = process_state()
    if state.is_main_process:
        manifests = EmbeddingStore(os.path.join(cli.output_dir, "pool")).manifests()
        result = {
            "num_processes": state.num_processes,
            "pool_index": list(transfer["pool_index"]),
            "score": list(transfer["score"]),
            "shards_by_process": sorted({m["process"] for m in manifests}),
            "shards": len(manifests),
        }
        with open(os.path.join(cli.output_dir, "result.json"), "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()
    end_processes()
