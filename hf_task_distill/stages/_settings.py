"""Groups of flags that several stages' results depend on (names as in :mod:`hf_task_distill.config`)."""

#: The labelled task and its label budget.
TASK = ("dataset", "per_class", "fraction", "images", "task_type", "budget_seed", "test_fraction")
#: Settings added after runs were first recorded: part of a stage's settings only when given (not
#: ``None``), so that a run recorded before them continues with the same fingerprints.
RECORDED_WHEN_GIVEN = ("images", "task_type", "student_crop_pct")
#: What every training stage shares: batches, seed, precision and the random crop and flip.
TRAINING = ("batch_size", "seed", "bf16", "fp16", "crop_min_scale", "hflip_probability")
#: Which student, and how it starts.
STUDENT = ("student", "pretrained_student", "student_image_size", "student_crop_pct")
