"""What a command shows, and where: the console policy of ``hf-task-distill``.

- **stdout**: the command's result (the summary table) and nothing else, so it can be piped.
- **stderr**: this package's log lines (each stage's start and end, warnings, errors), one named
  progress bar per Trainer loop (``distill: training``), each Trainer's evaluations and final
  summary, and whatever a library says at WARNING or above that is not listed below.
- **the run's log file** (``<output_dir>/hf-task-distill.log``, appended to by every command): the
  same, plus every Trainer log (loss, learning rate, gradient norm), as ``name value`` pairs.

Library noise that tells the user nothing is silenced where it is made, one kind at a time, never
with a blanket filter: third-party loggers stay at WARNING (faiss's loader reports its failed
CPU-specific imports, ``ModuleNotFoundError`` included, at INFO); transformers' weight-loading and
shard-writing bars are off (our stage lines say what is loading); the messages in :data:`SILENCED`
are dropped; transformers' load report is one line in the log file when all it reports is the
new classification head we asked for (see :class:`NewHeadLoadReport`). torch's ``pin_memory``
warning is avoided at its source: the pipeline pins memory only when there is an accelerator.

:class:`ConsoleSession` installs all of this for one command and puts everything back on exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from typing import Any

from transformers import TrainerCallback

__all__ = ["LOG_FILE", "SILENCED", "ConsoleSession", "NewHeadLoadReport", "StageProgressCallback"]

LOG_FILE = "hf-task-distill.log"
LOG_FORMAT = "%(asctime)s %(name)s: %(message)s"

logger = logging.getLogger(__name__)
training_logger = logging.getLogger("hf_task_distill.training")

#: (logger, start of the message, why it tells a user of this tool nothing)
SILENCED = (
    (
        "transformers.models.auto.image_processing_auto",
        "Requested torchvision backend is not available",
        "said of image processors that have no torchvision variant (timm models), although "
        "torchvision is installed (it is a dependency); the PIL variant it falls back to is the one we want",
    ),
    (
        "transformers.models.timm_wrapper.image_processing_timm_wrapper",
        "The `save_pretrained` method is disabled for TimmWrapperImageProcessor",
        "saving a timm teacher: its preprocessing is saved in config.json, as the message itself says",
    ),
)


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SHAPES = re.compile(r"ckpt: torch\.Size\(\[([\d, ]*)\]\) vs model: ?torch\.Size\(\[([\d, ]*)\]\)")


class NewHeadLoadReport(logging.Filter):
    """transformers' LOAD REPORT, when all it reports is a classification head re-initialised for
    another label count, becomes one DEBUG line (the run's log file).

    That is what ``load_teacher(..., labels=)`` (which warns of the new head itself) and
    ``create_student(..., pretrained=True)`` ask for (``ignore_mismatched_sizes=True``); the table
    (``MISMATCH``, in yellow) reads like an error. The head's signature: every mismatched weight
    differs from the checkpoint in its first dimension only (the label count), the same counts for
    all. So does a report whose only rows are a classifier's head weights left UNEXPECTED, when its
    backbone alone is loaded (a retrieval encoder). A report with anything else (missing keys, other
    unexpected or converted keys, a mismatch in another dimension, such as position embeddings resized
    for another image size) is shown unchanged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether to keep ``record`` (``logging.Filter`` protocol); a new-head report is logged at DEBUG.

        Args:
            record (`logging.LogRecord`): a record of the ``transformers`` logger.

        Returns:
            `bool`: ``False`` for a report that only re-initialises a head (it is written at DEBUG
            instead), ``True`` for every other record.
        """
        message = _ANSI.sub("", record.getMessage())
        if "LOAD REPORT" not in message:
            return True
        first, _, table = message.partition("\n")
        rows = [
            [cell.strip() for cell in line.split("|")]
            for line in table.splitlines()
            if "|" in line and not line.startswith(("Key ", "-"))
        ]
        if rows and all(len(row) >= 2 and row[1] == "UNEXPECTED" for row in rows):
            # a classifier's head left out when its backbone alone is loaded (a retrieval encoder)
            heads = {row[0].rsplit(".", 1)[0].rsplit(".", 1)[-1] for row in rows}
            if heads <= {"fc", "classifier", "head"} and all(
                row[0].endswith((".weight", ".bias")) for row in rows
            ):
                source = first.split(" from: ", 1)[-1].strip()
                logger.debug(
                    "%s: its classification head is not used (%s)", source, ", ".join(r[0] for r in rows)
                )
                return False
            return True
        if not rows or any(len(row) < 3 or row[1] != "MISMATCH" for row in rows):
            return True
        shapes = [_SHAPES.search(row[2]) for row in rows]
        if not all(shapes):
            return True
        pairs = [tuple(tuple(int(d) for d in s.split(",") if d.strip()) for s in m.groups()) for m in shapes]
        if not all(old and new and old[1:] == new[1:] for old, new in pairs):
            return True
        old_labels, new_labels = {old[0] for old, _ in pairs}, {new[0] for _, new in pairs}
        if len(old_labels) != 1 or len(new_labels) != 1:
            return True
        source = first.split(" from: ", 1)[-1].strip()
        logger.debug(  # load_teacher warns of its new head itself; a pretrained student's is new by design
            "%s: a new %d-class head (%s) in place of the checkpoint's %d-class one; all else loaded",
            source,
            new_labels.pop(),
            ", ".join(row[0] for row in rows),
            old_labels.pop(),
        )
        return False


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return str(value) if isinstance(value, int) else f"{value:.4g}"


class StageProgressCallback(TrainerCallback):
    """A Trainer's progress as a bar named after its stage, and its logs to the log, as numbers.

    In place of transformers' ``ProgressCallback``, whose bars are unnamed and which prints every
    log dict (its numbers formatted as strings) on stdout, among a command's results. ``label``
    defaults to the Trainer's output folder: ``<run>/distill/checkpoints`` is ``distill``. Logs go
    to the ``hf_task_distill.training`` logger: evaluations and the end-of-training summary at INFO,
    the periodic training logs at DEBUG (the run's log file), each record carrying the numbers as
    ``record.metrics``. The latest loss shows on the bar.
    """

    def __init__(self, label: str | None = None):
        self.label = label
        self.training_bar = None
        self.prediction_bar = None
        self.current_step = 0

    def _name(self, args) -> str:
        if self.label:
            return self.label
        path = os.path.normpath(args.output_dir or "training")
        name = os.path.basename(path)
        name = os.path.basename(os.path.dirname(path)) if name == "checkpoints" else name
        return name.removesuffix(".redo")  # a stage redone beside its finished result

    def on_train_begin(self, args, state, control, **kwargs):
        """Open the training bar (``state.max_steps`` steps) on the main process."""
        from tqdm.auto import tqdm

        if state.is_world_process_zero:
            self.training_bar = tqdm(
                total=state.max_steps, desc=f"{self._name(args)}: training", unit="step", dynamic_ncols=True
            )
        self.current_step = 0

    def on_step_end(self, args, state, control, **kwargs):
        """Advance the training bar to ``state.global_step``."""
        if state.is_world_process_zero and self.training_bar is not None:
            self.training_bar.update(state.global_step - self.current_step)
            self.current_step = state.global_step

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        """Advance the evaluation bar by one batch (opened on the first batch; needs a sized loader)."""
        from tqdm.auto import tqdm

        if (
            not state.is_world_process_zero
            or eval_dataloader is None
            or not hasattr(eval_dataloader, "__len__")
        ):
            return
        if self.prediction_bar is None:
            self.prediction_bar = tqdm(
                total=len(eval_dataloader),
                desc=f"{self._name(args)}: evaluating",
                unit="batch",
                leave=False,
                dynamic_ncols=True,
            )
        self.prediction_bar.update(1)

    def _close_prediction_bar(self, state):
        if state.is_world_process_zero and self.prediction_bar is not None:
            self.prediction_bar.close()
        self.prediction_bar = None

    def on_evaluate(self, args, state, control, **kwargs):
        """Close the evaluation bar."""
        self._close_prediction_bar(state)

    def on_predict(self, args, state, control, **kwargs):
        """Close the prediction bar."""
        self._close_prediction_bar(state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Log ``logs`` (without ``total_flos``) on the main process and show the loss on the bar.

        Summaries (``train_runtime``, ``eval_*``) are logged at INFO, periodic training logs at DEBUG;
        each record carries the numbers as ``record.metrics``.
        """
        if not state.is_world_process_zero or not logs:
            return
        metrics = {k: v for k, v in logs.items() if k != "total_flos"}
        summary = "train_runtime" in metrics or any(k.startswith("eval_") for k in metrics)
        training_logger.log(
            logging.INFO if summary else logging.DEBUG,
            "%s: step %d/%d, epoch %s: %s",
            self._name(args),
            state.global_step,
            state.max_steps,
            _number(state.epoch or 0.0),
            ", ".join(f"{k} {_number(v)}" for k, v in metrics.items() if k != "epoch"),
            extra={"metrics": metrics},
        )
        if self.training_bar is not None and isinstance(metrics.get("loss"), (int, float)):
            self.training_bar.set_postfix(loss=_number(metrics["loss"]), refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        """Close the training bar."""
        if state.is_world_process_zero and self.training_bar is not None:
            self.training_bar.close()
        self.training_bar = None


class HomeHidingFormatter(logging.Formatter):
    """A formatter that writes the home directory as ``~`` in every record, ours or a library's
    (transformers' load report names the folder a model came from), so that a log a user shares, on
    the console or in ``hf-task-distill.log``, names no home directory and with it no user name."""

    def format(self, record: logging.LogRecord) -> str:
        """The record formatted by :class:`logging.Formatter`, with the home directory as ``~``."""
        text = super().format(record)
        home = os.path.expanduser("~").rstrip(os.sep)
        return text.replace(home + os.sep, "~" + os.sep) if len(home) > 1 else text


class _TqdmAwareHandler(logging.StreamHandler):
    """Writes each line through ``tqdm.write``, so a log line does not land in the middle of a bar."""

    def emit(self, record):
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)


def close_progress_bars() -> None:
    """End every open progress bar on its own line (before a last message, e.g. after Ctrl-C)."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        with contextlib.suppress(Exception):
            bar.close()


class ConsoleSession(contextlib.ExitStack):
    """The console policy (module docstring) for one command; every change is undone on exit.

    ``main_process=False`` (the other ranks of a launch): warnings and errors only, and no log file.
    ``log_to(folder)`` adds the run's log file once the run directory is known.
    """

    def __init__(self, *, main_process: bool = True):
        super().__init__()
        self.main_process = main_process

    def __enter__(self):
        super().__enter__()
        try:
            self._logging()
            self._library_noise()
            self._progress_bars()
        except BaseException:
            self.close()
            raise
        return self

    def _set(self, obj, attribute: str, value) -> None:
        old = getattr(obj, attribute)
        setattr(obj, attribute, value)
        self.callback(setattr, obj, attribute, old)

    def _level(self, target: logging.Logger, level: int) -> None:
        self.callback(target.setLevel, target.level)
        target.setLevel(level)  # setLevel, not .level =: loggers cache isEnabledFor

    def _logging(self) -> None:
        root, ours = logging.getLogger(), logging.getLogger("hf_task_distill")
        handler = _TqdmAwareHandler(sys.stderr)
        handler.setFormatter(HomeHidingFormatter(LOG_FORMAT, datefmt="%H:%M:%S"))
        handler.setLevel(logging.INFO if self.main_process else logging.WARNING)
        root.addHandler(handler)
        self.callback(root.removeHandler, handler)
        self._level(root, logging.WARNING)  # other libraries: warnings and errors only
        self._level(ours, logging.DEBUG)  # the handlers choose: INFO on stderr, DEBUG in the file

    def _library_noise(self) -> None:
        from transformers.utils import logging as hf_logging

        for name, prefix, _why in SILENCED:
            self._filter(logging.getLogger(name), _DropMessage(prefix))
        self._filter(logging.getLogger("transformers.modeling_utils"), NewHeadLoadReport())
        if hasattr(hf_logging, "set_tqdm_hook"):  # weight loading, shard writing; not Hub downloads
            previous = hf_logging.set_tqdm_hook(
                lambda factory, args, kwargs: factory(*args, **{**kwargs, "disable": True})
            )
            self.callback(hf_logging.set_tqdm_hook, previous)

    def _filter(self, target: logging.Logger, log_filter: logging.Filter) -> None:
        target.addFilter(log_filter)
        self.callback(target.removeFilter, log_filter)

    def _progress_bars(self) -> None:
        # Trainer.__init__ adds transformers.trainer.DEFAULT_PROGRESS_CALLBACK (transformers itself
        # swaps it for notebooks); ours names its bars and logs instead of printing.
        import transformers.trainer

        if hasattr(transformers.trainer, "DEFAULT_PROGRESS_CALLBACK"):
            self._set(transformers.trainer, "DEFAULT_PROGRESS_CALLBACK", StageProgressCallback)

    def log_to(self, folder: str) -> str | None:
        """Append this command's log to ``<folder>/hf-task-distill.log``; returns its path."""
        if not self.main_process:
            return None
        path = os.path.join(folder, LOG_FILE)
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(HomeHidingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.DEBUG)
        logging.getLogger().addHandler(handler)
        self.callback(handler.close)
        self.callback(logging.getLogger().removeHandler, handler)
        return path
