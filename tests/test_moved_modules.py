"""Modules that moved keep their old path for one release: the old name is the new module itself,
with a FutureWarning that names the new path (docs/pipeline.md lists them)."""

from __future__ import annotations

import importlib
import sys
import warnings

import pytest

MOVED = {
    "hf_task_distill.teacher": "hf_task_distill.teacher_finetuning",
    "hf_task_distill.compute": "hf_task_distill.ledger",
    "hf_task_distill.retrieval.output": "hf_task_distill.retrieval.transfer_set",
    "hf_task_distill.miniature": "hf_task_distill.demo.miniature",
    "hf_task_distill.data.glyphs": "hf_task_distill.demo.glyphs",
    "hf_task_distill.data.digits": "hf_task_distill.demo.digits",
}


@pytest.mark.parametrize(("old", "new"), MOVED.items())
def test_an_old_module_path_is_the_new_module_with_a_warning(old, new):
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    messages = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert messages == [f"{old} is now {new}; the old module path stops working in hf-task-distill 0.2.0"]


def test_the_package_itself_imports_no_old_path():
    """The package's own imports use the new paths: none of its modules imports an old one."""
    import subprocess

    code = (
        "import warnings; warnings.simplefilter('error', FutureWarning)\n"
        "import hf_task_distill, hf_task_distill.cli, hf_task_distill.pipeline, hf_task_distill.demo\n"
        "import hf_task_distill.demo.miniature, hf_task_distill.retrieval, hf_task_distill.stages\n"
        "from hf_task_distill import TeacherFinetuner, DistillationTrainer, load_target_task\n"
        "load_target_task('digits')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
