"""What the command line shows: its help, its version, a pipe closed early, Ctrl-C, and the console
of a whole run (named progress bars and stage lines on stderr, results alone on stdout, library
noise silenced)."""

from __future__ import annotations

import dataclasses
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from conftest import make_colour_dataset, save_image_folder

import hf_task_distill
from hf_task_distill.cli import main, parse_config
from hf_task_distill.config import ARGUMENT_GROUPS

CLI = [sys.executable, "-m", "hf_task_distill.cli"]
RESUME_LINE = re.compile(r"^hf-task-distill: interrupted.*run the same command again to resume")
#: Measured at 80 columns: `run --help` was 176 lines (one flat list, every flag twice); 113 after.
HELP_LINES_AT_MOST = 120
#: Measured on the short demo below (newline-terminated stderr lines; a progress bar redraws itself
#: with "\r"): 58 before (212 counting redraws), with Trainer dicts on stdout; 23 after. The bound
#: leaves room for a few more stage lines.
DEMO_STDERR_LINES_AT_MOST = 35


@pytest.fixture(autouse=True)
def _eighty_columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps help at the terminal's width


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out


def _help_sections(text: str) -> dict[str, str]:
    """Help text split at its unindented ``title:`` lines."""
    sections, title = {}, None
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            title = line[:-1]
            sections[title] = ""
        elif title is not None:
            sections[title] += line + "\n"
    return sections


def _flag_help(text: str, flag: str) -> str:
    """The help of one flag: its line and the indented continuation lines after it."""
    match = re.search(rf"^  {re.escape(flag)}\b(.*(?:\n {{10,}}.*)*)", text, flags=re.M)
    assert match, f"{flag} is not in the help"
    return " ".join(match.group(1).split())


# -- help, version, pipes --------------------------------------------------------------------------
def test_run_help_is_grouped_by_concern(capsys):
    text = _help("run", capsys)
    sections = _help_sections(text)
    for group in ARGUMENT_GROUPS:
        title = getattr(group, "_argument_group_name", None)
        assert title, f"{group.__name__} has no _argument_group_name"
        assert title in sections, f"no '{title}:' section in the help"
        for f in dataclasses.fields(group):
            shown = f"--no_{f.name}" if f.default is True else f"--{f.name}"
            assert re.search(rf"^  {shown}\b", sections[title], flags=re.M), f"{shown} not under '{title}'"
    assert len(text.splitlines()) <= HELP_LINES_AT_MOST, len(text.splitlines())


def test_help_shows_each_flag_once_and_switches_without_a_value(capsys):
    text = _help("run", capsys)
    assert not re.findall(r"--[a-z0-9]+(?:_[a-z0-9]+)*-[a-z]", text)  # no --per-class beside --per_class
    assert not re.findall(r"--\w+ \[[A-Z_]+\]", text)  # not --bf16 [BF16]
    for switch in ("--bf16", "--fp16", "--pretrained_student", "--trust_remote_code", "--hub_private"):
        assert re.search(rf"^  {switch}  ", text, flags=re.M), switch
    off = _flag_help(text, "--no_baseline")
    assert "off" in off.lower() and not off.startswith("Also train"), off  # it turns the baseline off


def test_the_hidden_spellings_and_switches_still_parse():
    config = parse_config("run", ["--dataset", "digits", "--per-class", "3", "--bf16", "--no_baseline"])
    assert config.task.per_class == 3 and config.run.bf16 and not config.student.baseline
    config = parse_config(
        "run", ["--dataset", "digits", "--baseline", "false", "--pretrained_student", "true"]
    )
    assert not config.student.baseline and config.student.pretrained_student


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"hf-task-distill {hf_task_distill.__version__}\n"


@pytest.mark.parametrize("argv", [["-h"], ["run", "--help"]], ids=["usage", "run-help"])
def test_help_piped_into_a_reader_that_stops_early_ends_quietly(argv):
    """`hf-task-distill -h | head -1`: the reader closes the pipe; no BrokenPipeError traceback."""
    process = subprocess.Popen([*CLI, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone before the first write
    err = process.stderr.read().decode()
    process.wait(timeout=120)
    assert "BrokenPipeError" not in err and "Traceback" not in err and "Exception ignored" not in err, err


# -- library noise, one kind at a time --------------------------------------------------------------
def _load_report(**keys) -> list[str]:
    """What transformers' load report logs through a logger carrying NewHeadLoadReport."""
    import logging

    import torch
    from transformers.utils.loading_report import LoadStateDictInfo, log_state_dict_report

    from hf_task_distill.console import NewHeadLoadReport

    empty = {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set()}
    info = LoadStateDictInfo(**{**empty, **keys}, error_msgs=[], conversion_errors={}, skipped_pp_keys=set())
    info.mismatched_keys = {(k, torch.Size(a), torch.Size(b)) for k, a, b in info.mismatched_keys}
    seen: list[str] = []
    target = logging.getLogger("tests.load_report")
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    target.addHandler(handler)
    target.addFilter(report_filter := NewHeadLoadReport())
    try:
        log_state_dict_report(torch.nn.Linear(1, 1), "teacher", True, info, logger=target)
    finally:
        target.removeFilter(report_filter)
        target.removeHandler(handler)
    return seen


def test_the_load_report_is_hidden_only_when_all_it_reports_is_a_new_head():
    head = {("fc.weight", (269, 256), (10, 256)), ("fc.bias", (269,), (10,))}
    assert _load_report(mismatched_keys=head) == []  # the new head we asked for: the log file only
    # a classifier's head left out when its backbone alone is loaded (a retrieval encoder)
    assert _load_report(unexpected_keys={"timm_model.fc.weight", "timm_model.fc.bias"}) == []
    for problem in (
        {"mismatched_keys": head | {("pos_embed", (1, 197, 64), (1, 257, 64))}},  # resized, not new
        {"mismatched_keys": head, "missing_keys": {"blocks.0.attn.qkv.weight"}},
        {"unexpected_keys": {"fc.extra"}},
    ):
        shown = _load_report(**problem)
        assert len(shown) == 1 and "LOAD REPORT" in shown[0], problem


# -- a whole run: Ctrl-C, then the same command again ----------------------------------------------
DEMO = ["--teacher_epochs", "1", "--distill_epochs", "1", "--finetune_epochs", "1", "--per_class", "3"]


@pytest.fixture(scope="module")
def interrupted_demo(tmp_path_factory):
    """The short demo, interrupted with SIGINT (Ctrl-C) in its first stage, then run again to the end."""
    root = tmp_path_factory.mktemp("console")
    argv = ["demo", "--output_dir", str(root / "run"), *DEMO]
    with open(root / "out1", "w") as out, open(root / "err1", "w") as err:
        # Ctrl-C's default action in the child, also when this test runs as a background job (a shell
        # without job control starts those with SIGINT ignored, and Python keeps an inherited ignore)
        process = subprocess.Popen(
            [*CLI, *argv],
            stdout=out,
            stderr=err,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None and not (root / "run" / "teacher").exists():
            time.sleep(0.1)
        time.sleep(3)  # into the stage's work (loading, the linear probe or training)
        assert process.poll() is None, (root / "err1").read_text()[-3000:]
        process.send_signal(signal.SIGINT)
        interrupted_code = process.wait(timeout=120)
    again = subprocess.run([*CLI, *argv], capture_output=True, timeout=900)  # bytes: keep the "\r"s
    return {
        "root": root,
        "interrupted_code": interrupted_code,
        "interrupted_err": (root / "err1").read_bytes().decode(),
        "again": SimpleNamespace(
            returncode=again.returncode, stdout=again.stdout.decode(), stderr=again.stderr.decode()
        ),
    }


def test_ctrl_c_ends_with_one_line_on_how_to_resume(interrupted_demo):
    err = interrupted_demo["interrupted_err"]
    assert interrupted_demo["interrupted_code"] == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    lines = [line for line in re.split(r"[\r\n]", err) if line.strip()]
    assert RESUME_LINE.match(lines[-1]), lines[-3:]
    assert sum(bool(RESUME_LINE.match(line)) for line in lines) == 1
    again = interrupted_demo["again"]
    assert again.returncode == 0, again.stderr[-3000:]  # ... and the same command did resume


def test_results_alone_on_stdout_and_training_logs_in_the_log(interrupted_demo):
    again = interrupted_demo["again"]
    assert again.returncode == 0, again.stderr[-3000:]
    out = again.stdout
    assert "| student, distilled + finetuned |" in out
    for stream in (out, again.stderr):
        assert not re.search(r"\{'(loss|eval_loss|train_runtime)'", stream), stream[-2000:]
    log = (interrupted_demo["root"] / "run" / "hf-task-distill.log").read_text()
    assert re.search(r"distill: .*\bloss \d", log), log[-2000:]  # the Trainer's logs, as numbers


def test_progress_bars_are_named_and_library_noise_is_silenced(interrupted_demo):
    err = interrupted_demo["again"].stderr
    for noise in (
        "pin_memory",  # torch, on every DataLoader when there is no accelerator
        "torchvision backend",  # transformers, although torchvision is installed
        "LOAD REPORT",  # transformers' table for the new head that we asked for and announce
        "ModuleNotFoundError",  # faiss's loader trying CPU-specific builds
        "save_pretrained` method is disabled",  # transformers, on saving a timm model's processor
    ):
        assert noise not in err, f"{noise!r} in stderr:\n{err[-3000:]}"
    segments = [s for s in re.split(r"[\r\n]", err) if s.strip()]
    unnamed = [s for s in segments if re.match(r"^\s*\d+%\|", s)]
    assert not unnamed, unnamed[:3]  # every bar says what it counts
    assert any(s.startswith("distill: training") for s in segments), err[-3000:]
    lines = err.count("\n")
    assert lines <= DEMO_STDERR_LINES_AT_MOST, f"{lines} stderr lines:\n{err}"


def test_retrieval_does_not_print_faiss_loader_lines(tmp_path):
    """build-transfer-set with retrieval imports faiss, whose loader logs its failed CPU-specific
    imports (ModuleNotFoundError) at INFO: that is not for the user."""
    from hf_task_distill.demo.miniature import mini_vfm_path

    save_image_folder(make_colour_dataset(24, seed=3), tmp_path / "pool", labelled=False)
    argv = [
        "build-transfer-set", "--dataset", "digits", "--per_class", "2",
        "--teacher", mini_vfm_path(), "--transfer", "retrieval", "--pool", str(tmp_path / "pool"),
        "--per_query_k", "2", "--output_dir", str(tmp_path / "run"),
    ]  # fmt: skip
    result = subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "faiss.loader" not in result.stderr and "ModuleNotFoundError" not in result.stderr, result.stderr
