"""Stage 6, ``publish``: the student (and a retrieved transfer set) as folders ready for the Hub, with
their cards; pushed when ``--push_to_hub`` is given."""

from __future__ import annotations

from .base import Stage, StageResult, get_stage, register_stage


@register_stage
class PublishStage(Stage):
    """``student/`` (with the export stage's ``onnx/`` when it ran) and ``transfer_set/`` folders with
    their cards; pushed with ``--push_to_hub``."""

    name = "publish"
    command = "push"
    command_help = "Publish the student (and a retrieved transfer set) to the Hub; needs --hub_model_id."
    command_settings = {"push_to_hub": True}
    settings_read = ("push_to_hub", "hub_model_id", "hub_dataset_id", "hub_private")
    recomputed_freely = True
    command_needs_finished = True  # `push` uploads a finished run; it does not train one

    def upstream(self, config):
        exported = ("export",) if get_stage("export").enabled(config) else ()
        return ("transfer", "finetune", "evaluate", *exported)

    def run(self, context, directory):
        from ..hub.publish import publish_run

        return StageResult(publish_run(context, directory))
