"""All three stages, from a VFM and a labelled dataset to an evaluated, publishable student.

    accelerate launch examples/run_distill.py --dataset cub --teacher facebook/dinov2-large

The paper's tasks, with their label budgets (see docs/recipes.md for the full settings):

    accelerate launch examples/run_distill.py --dataset eurosat --per_class 10 \\
        --teacher facebook/dinov2-large --student mobilevitv2_100 --student_image_size 256 --bf16
    accelerate launch examples/run_distill.py --dataset ham10000 --per_class 250 ...
    accelerate launch examples/run_distill.py --dataset places365 --per_class 50 \\
        --transfer retrieval --pool my-org/web-image-pool --per_query_k 31 ...

It is ``hf-task-distill run``: the same flags (``--help``), the same run directory, and a rerun
skips the stages that are complete. A single ``.json``/``.yaml`` path works instead of flags.
"""

import sys

from hf_task_distill.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
