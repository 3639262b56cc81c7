"""Stage 6, ``publish``: the student (and a retrieved transfer set) as folders ready for the Hub, with
their cards; pushed when ``--push_to_hub`` is given."""

from __future__ import annotations

import logging

from .base import Stage, StageResult, get_stage, register_stage

logger = logging.getLogger(__name__)


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

    def still_serves(self, recorded, current):
        """A publish that pushed also published: a command that does not push keeps it (and the commit
        ids in its manifest) when every other setting and upstream stage is the same."""
        if not recorded.get("push_to_hub") or current.get("push_to_hub"):
            return False
        return {**recorded, "push_to_hub": False} == current

    def check_ready(self, config):
        """With ``--push_to_hub``: the repo ids, the token and its rights (:func:`push_targets`), before
        any stage; a Hub out of reach is only logged, so that an offline run still trains and writes
        the folders."""
        from ..hub.publish import _first_line, push_targets

        _, unreachable = push_targets(config.run)
        if unreachable is not None:
            logger.warning(
                "Could not check the push with the Hub (%s); it is tried after the run's stages",
                _first_line(unreachable),
            )

    def run(self, context, directory):
        from ..hub.publish import publish_run

        return StageResult(publish_run(context, directory))
