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
from .labels import label_config_kwargs

__all__ = ["create_student", "is_timm_architecture"]


def create_student(
    name_or_path: str,
    labels: int | Sequence[str] | Mapping[int, str],
    *,
    pretrained: bool = False,
    model_args: dict[str, Any] | None = None,
    image_size: int | None = None,
    **from_pretrained_kwargs: Any,
):
    """Create a student classifier for ``labels``.

    ``name_or_path`` is a timm architecture (``mobilevitv2_100``, ``fastvit_t8``, ``resnet50``; add a
    ``.tag`` to choose pretrained weights), or a Hub id/folder of any image classifier (timm repos such as
    ``timm/mobilevitv2_100.cvnets_in1k`` included), or a name a registered student family matches
    (:func:`~hf_task_distill.models.families.register_student_family`). ``pretrained=False`` starts
    from the architecture's own random initialisation (the paper's setting); ``pretrained=True``
    loads the weights and replaces the classifier. ``model_args`` go to ``timm.create_model`` (e.g.
    ``{"drop_path_rate": 0.1}``) and are recorded in the config so the model rebuilds identically.
    ``image_size`` (timm students) sets the training/evaluation resolution recorded in the model's
    ``pretrained_cfg``, which the student's views and its saved image processor follow; models with a
    fixed input size are built for it.

    Raises:
        ValueError: bad ``labels``; a name that cannot be a model (``check_model_source``: no such
            folder, an unknown timm name with the closest ones); ``image_size`` for a model that
            cannot take it.
    """
    label_config_kwargs(labels)  # bad labels are refused before the name is looked at
    check_model_source(name_or_path, "student", timm_architectures=True)
    family = student_family_for(name_or_path)
    return family.create(
        name_or_path,
        labels,
        pretrained=pretrained,
        model_args=model_args,
        image_size=image_size,
        **from_pretrained_kwargs,
    )
