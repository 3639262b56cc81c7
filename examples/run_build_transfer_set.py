"""Stage 2 alone: retrieve a transfer set from an image pool around the labelled target images.

    accelerate launch examples/run_build_transfer_set.py --dataset eurosat --per_class 10 \\
        --transfer retrieval --pool "/data/pool/*.parquet" --per_query_k 31 \\
        --teacher facebook/dinov2-large --output_dir runs/eurosat-10shot

The pool is embedded once with the teacher's backbone (before finetuning), in resumable shards
split across the launched processes; the result (rows, dataset card, contact sheet) lands in
``<output_dir>/transfer/data``. It is ``hf-task-distill build-transfer-set``: same flags (``--help``).
"""

import sys

from hf_task_distill.cli import main

if __name__ == "__main__":
    sys.exit(main(["build-transfer-set", *sys.argv[1:]]))
