"""The ``transformers`` family: a Hub id or folder of any image classifier (timm repos such as
``timm/mobilevitv2_100.cvnets_in1k`` included), or a name the package ships (``mini-vfm``).

It is asked last and takes every name no other family matches (``check_model_source`` has already
refused the names that cannot be a model), and every model: its preprocessing is the image
processor saved where the model came from, its head the linear layer with one output per class.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ...sources import resolve_model_source
from ..labels import label_config_kwargs, label_names_of, set_label_space
from ..teacher import _config_kwargs, load_for_classes
from .base import StudentFamily, warn_new_head
from .timm import wrap_timm
from .transformers_segmentation import (
    create_segmentation_student,
    is_segmentation_student,
    segmentation_image_processor,
)

__all__ = ["TransformersFamily", "linear_head_for_classes"]

#: The task type of semantic-segmentation students.
SEGMENTATION = "image-segmentation"
#: Names the head of a transformers or timm classifier goes by, preferred among equal candidates.
HEAD_NAMES = ("classifier", "head", "fc")


class TransformersFamily(StudentFamily):
    """Image classifiers ``AutoModelForImageClassification`` loads, from the Hub or a folder, and
    semantic-segmentation models (``task_type="image-segmentation"``: see
    :mod:`~hf_task_distill.models.families.transformers_segmentation`)."""

    name = "transformers"
    task_types = ("image-classification", SEGMENTATION)

    def matches(self, name_or_path: str) -> bool:
        """Every name: this family is asked last."""
        return True

    def create(
        self,
        name_or_path: str,
        labels,
        *,
        pretrained: bool = False,
        image_size: int | None = None,
        model_args: dict[str, Any] | None = None,
        task_type: str = "image-classification",
        **from_pretrained_kwargs: Any,
    ):
        """The checkpoint's architecture for ``labels``: from its config with a fresh initialisation
        (a timm checkpoint through timm's own, see :func:`~.timm.wrap_timm`), or with its weights
        (``pretrained=True``; a new head unless it already predicts ``labels``). ``image_size`` is
        for timm checkpoints only (recorded in ``pretrained_cfg``). ``task_type="image-segmentation"``:
        :func:`~.transformers_segmentation.create_segmentation_student`."""
        from transformers import AutoConfig

        if task_type == SEGMENTATION:
            return create_segmentation_student(
                name_or_path,
                labels,
                pretrained=pretrained,
                image_size=image_size,
                model_args=model_args,
                **from_pretrained_kwargs,
            )
        source = resolve_model_source(name_or_path)
        if image_size is not None:
            _check_resizable(
                AutoConfig.from_pretrained(source, **_config_kwargs(from_pretrained_kwargs)), name_or_path
            )
            model = self.create(name_or_path, labels, pretrained=pretrained, **from_pretrained_kwargs)
            model.config.pretrained_cfg["input_size"] = [3, image_size, image_size]  # what its views follow
            model.config.pretrained_cfg.pop("test_input_size", None)
            return model
        if not pretrained:
            return _from_config(source, labels, model_args, from_pretrained_kwargs)
        names = list(label_config_kwargs(labels)["id2label"].values())
        from_pretrained_kwargs.setdefault("use_safetensors", True)
        config = AutoConfig.from_pretrained(source, **_config_kwargs(from_pretrained_kwargs))
        return load_for_classes(
            source,
            name_or_path,
            config,
            names,
            on_new_head=lambda: warn_new_head(name_or_path, label_names_of(config), len(names)),
            **from_pretrained_kwargs,
        )

    def owns(self, model: Any) -> bool:
        """Every model (the fallback for what other families leave)."""
        return True

    def view_spec(self, model: Any):
        """From the image processor saved where the model was loaded from (``config._name_or_path``);
        a segmentation student's from its config (:func:`~.transformers_segmentation.segmentation_image_processor`)."""
        from transformers import AutoImageProcessor

        from ...data.views import ViewSpec

        if is_segmentation_student(model):
            return ViewSpec.from_image_processor(segmentation_image_processor(model))
        source = getattr(getattr(model, "config", None), "_name_or_path", "")
        if not source:
            raise ValueError(
                f"{type(model).__name__} does not say where it was loaded from: pass its image processor "
                "(e.g. processor=AutoImageProcessor.from_pretrained(...))"
            )
        try:
            processor = AutoImageProcessor.from_pretrained(source)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"could not load the image processor of {type(model).__name__} from '{source}': {err}. "
                "Save it next to the model or pass it explicitly"
            ) from err
        return ViewSpec.from_image_processor(processor)

    def head(self, model: Any) -> nn.Linear:
        """See :func:`linear_head_for_classes`."""
        return linear_head_for_classes(model)


def linear_head_for_classes(model: nn.Module) -> nn.Linear:
    """The linear layer with ``model.config.num_labels`` outputs, preferring one named ``classifier``,
    ``head`` or ``fc``, else the last such layer.

    Raises:
        ValueError: ``model`` has no linear layer of that width.
    """
    num_labels = model.config.num_labels
    candidates = [
        (n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_labels
    ]
    for name, module in candidates:
        if name.split(".")[-1] in HEAD_NAMES:
            return module
    if not candidates:
        raise ValueError(
            f"{type(model).__name__} has no linear layer with {num_labels} outputs to serve as the head"
        )
    return candidates[-1][1]


def _from_config(
    source: str, labels, model_args: dict[str, Any] | None, from_pretrained_kwargs: dict[str, Any]
):
    """The checkpoint's architecture, freshly initialised, for ``labels``."""
    from transformers import AutoConfig, AutoModelForImageClassification

    label_kwargs = label_config_kwargs(labels)
    config = AutoConfig.from_pretrained(source, **label_kwargs, **from_pretrained_kwargs)
    if getattr(config, "model_type", None) == "timm_wrapper":
        # timm's own init, and saved with timm's key names (from_config would save them prefixed
        # with `timm_model.`, which timm.create_model("local-dir:...") cannot load)
        return wrap_timm(
            config.architecture,
            label_kwargs,
            pretrained=False,
            model_args={**(getattr(config, "model_args", None) or {}), **(model_args or {})},
            image_size=None,
            pretrained_cfg=getattr(config, "pretrained_cfg", None),
        )
    set_label_space(
        config, list(label_kwargs["id2label"].values())
    )  # a timm repo's config also lists its own classes
    if model_args:
        config.model_args = {**(getattr(config, "model_args", None) or {}), **model_args}
    return AutoModelForImageClassification.from_config(config)


def _check_resizable(config, name_or_path: str) -> None:
    """``image_size=`` sets a timm model's input size in its ``pretrained_cfg``; other models take
    theirs from their image processor, and some timm models are built for one size only."""
    cfg = getattr(config, "pretrained_cfg", None)
    if getattr(config, "model_type", None) != "timm_wrapper" or not isinstance(cfg, dict):
        raise ValueError(
            f"image_size= applies to timm students; '{name_or_path}' is a {getattr(config, 'model_type', '?')} "
            "model: set its size in its image processor"
        )
    if cfg.get("fixed_input_size"):
        raise ValueError(
            f"'{name_or_path}' was built for {tuple(cfg.get('input_size', ()))[-2:]} inputs only (fixed_input_size): "
            "leave image_size= unset, or start from the architecture's name"
        )
