"""Students: ``create_student`` builds one through the student family its name belongs to.

The families live in :mod:`hf_task_distill.models.families`, one file each: ``timm`` (architecture
names, wrapped as ``TimmWrapperForImageClassification``) and ``transformers`` (Hub ids and folders
of any image classifier). A family you register is asked first (see docs/models.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..sources import check_model_source
from .families import is_timm_architecture, student_family_for
from .families.timm import WEIGHT_SOURCE_FIELDS as WEIGHT_SOURCE_FIELDS  # moved; importable from here too
from .families.timm import write_timm_folder as write_timm_folder
from .families.transformers_segmentation import SEGMENTATION_STUDENTS, check_segmentation_student
from .labels import label_config_kwargs

__all__ = ["create_student", "is_timm_architecture"]

CLASSIFICATION, SEGMENTATION = "image-classification", "image-segmentation"


def create_student(
    name_or_path: str,
    labels: int | Sequence[str] | Mapping[int, str],
    *,
    pretrained: bool = False,
    model_args: dict[str, Any] | None = None,
    image_size: int | None = None,
    crop_pct: float | None = None,
    task_type: str = "image-classification",
    **from_pretrained_kwargs: Any,
):
    """Create a student classifier (or, with ``task_type="image-segmentation"``, a semantic-segmentation
    student) for ``labels``.

    ``name_or_path`` is a timm architecture (``mobilevitv2_100``, ``fastvit_t8``, ``resnet50``; add a
    ``.tag`` to choose pretrained weights), or a Hub id/folder of any image classifier (timm repos such as
    ``timm/mobilevitv2_100.cvnets_in1k`` included), or a name a registered student family matches
    (:func:`~hf_task_distill.models.families.register_student_family`). ``pretrained=False`` starts
    from the architecture's own random initialisation (the paper's setting); ``pretrained=True``
    loads the weights and replaces the classifier. ``model_args`` go to ``timm.create_model`` (e.g.
    ``{"drop_path_rate": 0.1}``) and are recorded in the config so the model rebuilds identically.
    ``image_size`` (timm students) sets the training/evaluation resolution recorded in the model's
    ``pretrained_cfg``, which the student's views and its saved image processor follow; models with a
    fixed input size are built for it. ``crop_pct`` (timm students, in (0, 1]) replaces the evaluation
    centre crop recorded in ``pretrained_cfg`` (timm's ``--crop-pct``; ResNet-18's own is 0.95): 1.0
    evaluates an image already at ``image_size`` as it is, with no resampling (the demo's 32-px digits).

    ``task_type="image-segmentation"``: ``name_or_path`` is ``segformer-b0`` or
    ``mobilevitv2-deeplabv3`` (built from their configs, offline; ``model_args`` override config
    fields), or a Hub id/folder of a transformers semantic-segmentation model; ``image_size`` (default
    512) is recorded as ``config.image_size``, which its views and its image processor
    (:func:`~hf_task_distill.models.families.transformers_segmentation.segmentation_image_processor`)
    follow. Families that build other task types list them in ``StudentFamily.task_types``.

    Raises:
        ValueError: bad ``labels``; a name that cannot be a model (``check_model_source``: no such
            folder, an unknown timm name with the closest ones; for segmentation, an unknown short
            name); ``image_size`` for a model that cannot take it; a family that builds no students of
            ``task_type``; ``crop_pct`` outside (0, 1] or for a student that is not a timm model.
    """
    if crop_pct is not None:
        from ..checks import check_number

        crop_pct = check_number(crop_pct, "crop_pct", above=0, maximum=1)
    label_config_kwargs(labels)  # bad labels are refused before the name is looked at
    extra: dict[str, Any] = {}
    if task_type == CLASSIFICATION:
        if name_or_path in SEGMENTATION_STUDENTS:
            raise ValueError(
                f"student: '{name_or_path}' is a semantic-segmentation student: pass task_type='{SEGMENTATION}'"
            )
        check_model_source(name_or_path, "student", timm_architectures=True)
    else:
        if task_type == SEGMENTATION:
            check_segmentation_student(name_or_path, "student")
        extra["task_type"] = task_type  # families that build only classifiers never see it
    family = student_family_for(name_or_path)
    if task_type not in family.task_types:
        raise ValueError(
            f"student: '{name_or_path}' belongs to the {family.name} student family, which builds "
            f"{', '.join(family.task_types)} students, not {task_type}"
            + (
                f"; segmentation students: {', '.join(SEGMENTATION_STUDENTS)}"
                if task_type == SEGMENTATION
                else ""
            )
        )
    model = family.create(
        name_or_path,
        labels,
        pretrained=pretrained,
        model_args=model_args,
        image_size=image_size,
        **extra,
        **from_pretrained_kwargs,
    )
    if crop_pct is not None:
        set_crop_pct(model, crop_pct, name_or_path)
    return model


def set_crop_pct(model, crop_pct: float, name: str) -> None:
    """Record ``crop_pct`` as a timm student's evaluation centre crop (``config.pretrained_cfg``, which
    its views, its saved image processor and its export read).

    Raises:
        ValueError: ``model`` is not a timm student (its image processor, not this, sets its crop).
    """
    cfg = getattr(getattr(model, "config", None), "pretrained_cfg", None)
    if not isinstance(cfg, dict):
        kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise ValueError(
            f"crop_pct applies to timm students; '{name}' is a {kind} model: set its crop in its image processor"
        )
    cfg["crop_pct"] = float(crop_pct)
