"""docs/api.md is a promise: every name it offers imports from where it says, and the top level
exports what the design names.

How the page is read (its own first paragraph says the same): each ``##`` section names its
module(s) in backticks in its heading; a bullet that starts with a module path and a colon
(`` `hf_task_distill.files`: ...``) speaks for that module instead. A backticked span offers a name
when it is a class or constant (capitalised), a function (``name(...)``) or a dotted path; lowercase
names without parentheses are fields, columns or metric keys, spans starting with ``.`` are
methods and attributes, and spans inside parentheses describe the name before them.
"""

from __future__ import annotations

import builtins
import importlib
import keyword
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

import hf_task_distill

API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
DESIGN_CLASSES = ("DistillationTrainer", "TeacherFinetuner", "RetrievalTransferSetBuilder")
#: dotted paths starting with these are imported as written; others start from the section's module
PACKAGES = {"hf_task_distill", "datasets", "huggingface_hub", "torch", "transformers"}
_MODULE = re.compile(r"^hf_task_distill(\.[a-z_]+)*$")
_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


@dataclass(frozen=True)
class Claim:
    section: str
    modules: tuple[str, ...]
    name: str  # a bare name or a dotted path

    def __str__(self):
        return f"{self.name} [{', '.join(self.modules) or 'no module'}]"


def _spans_outside_parentheses(text: str) -> list[str]:
    """Backticked spans of ``text`` at parenthesis depth 0 (parentheses counted outside backticks)."""
    spans, depth = [], 0
    for i, part in enumerate(text.split("`")):
        if i % 2:  # inside backticks
            if depth == 0:
                spans.append(part)
        else:
            depth = max(0, depth + part.count("(") - part.count(")"))
    return spans


def _bullets(lines: list[str]) -> list[str]:
    bullets: list[str] = []
    for line in lines:
        if line.startswith("- "):
            bullets.append(line[2:])
        elif line.startswith("  ") and bullets:
            bullets[-1] += " " + line.strip()
        elif not line.strip() and bullets and bullets[-1]:
            bullets.append("")  # a blank line ends the bullet
    return [b for b in bullets if b]


def _offered(span: str) -> str | None:
    """The name a span offers for import, or None (see the module docstring)."""
    match = _NAME.match(span.strip())
    if match is None:
        return None
    name = match.group(0)
    rest = span.strip()[len(name) :]
    if re.search(r"\.(json|md|yaml|yml|txt|log|py|parquet|safetensors)$", name):
        return None  # a file name
    if "." in name:
        return name
    if keyword.iskeyword(name) or hasattr(builtins, name):
        return None
    if name[0].isupper() or rest.startswith("("):
        return name
    return None


def parse_api_doc(text: str) -> tuple[list[Claim], list[str]]:
    """The claims of the page, and the sections whose heading names no module."""
    claims: list[Claim] = []
    no_module: list[str] = []
    for block in re.split(r"^## ", text, flags=re.M)[1:]:
        heading, *lines = block.splitlines()
        modules = tuple(s for s in re.findall(r"`([^`]+)`", heading) if _MODULE.match(s))
        if not modules:
            no_module.append(heading)
        for bullet in _bullets(lines):
            spans = _spans_outside_parentheses(bullet)
            here = modules
            lead = re.match(r"`(hf_task_distill[\w.]*)`:", bullet)
            if lead and _MODULE.match(lead.group(1)):
                here, spans = (lead.group(1),), spans[1:]
            for span in spans:
                name = _offered(span)
                if name is not None:
                    claims.append(Claim(heading, here, name))
    return claims, no_module


CLAIMS, SECTIONS_WITHOUT_MODULE = parse_api_doc(API_DOC.read_text(encoding="utf-8"))


def _resolve(claim: Claim):
    """The object a claim names, importing as a user would; raises if it does not exist there."""
    first, *attributes = claim.name.split(".")
    if first in PACKAGES:
        # a dotted path from a package: the longest importable module prefix, then attributes
        parts = claim.name.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ModuleNotFoundError:
                continue
            for attribute in parts[cut:]:
                obj = getattr(obj, attribute)
            return obj
        raise ModuleNotFoundError(claim.name)
    found = [importlib.import_module(m) for m in claim.modules]
    owners = [m for m in found if hasattr(m, first)]
    if not owners:
        raise ImportError(f"cannot import {first} from {' or '.join(claim.modules) or '(no module named)'}")
    obj = getattr(owners[0], first)
    for attribute in attributes:
        obj = getattr(obj, attribute)
    return obj


def test_every_section_of_the_api_docs_names_its_module():
    assert not SECTIONS_WITHOUT_MODULE, SECTIONS_WITHOUT_MODULE


def test_the_api_docs_parse_into_claims():
    """The reader below is not silently testing nothing: it finds names of every kind."""
    names = {c.name for c in CLAIMS}
    assert len(CLAIMS) > 100
    assert {"PipelineConfig", "build_loss", "hf_task_distill.checkpoints.last_complete_checkpoint"} <= names
    assert "loss_name" not in names  # a field of DistillationArguments, not an import


@pytest.mark.parametrize("claim", CLAIMS, ids=str)
def test_every_name_in_the_api_docs_imports_from_where_the_docs_say(claim):
    _resolve(claim)


def test_the_top_level_section_lists_exactly_the_top_level_exports():
    listed = {c.name for c in CLAIMS if c.modules == ("hf_task_distill",)}
    exported = set(hf_task_distill.__all__) - {"__version__"}
    assert listed == exported, {
        "documented, not exported": listed - exported,
        "not documented": exported - listed,
    }


@pytest.mark.parametrize("name", DESIGN_CLASSES)
def test_the_design_classes_import_from_the_top_level(name):
    namespace: dict = {}
    exec(f"from hf_task_distill import {name}", namespace)  # the statement a user types
    submodule = importlib.import_module(f"hf_task_distill.{hf_task_distill._EXPORTS[name]}")
    assert namespace[name] is getattr(submodule, name)
    assert name in dir(hf_task_distill)


def test_every_class_and_function_the_api_docs_offer_has_a_docstring():
    """docs/api.md is checked against the docstrings: a name the page offers (a class, a function, a
    method named by a dotted path) says what it does where a user reads it (``help()``, an IDE)."""
    import inspect

    undocumented = set()
    for claim in CLAIMS:
        obj = _resolve(claim)
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__.startswith("hf_task_distill"):
            if not (inspect.getdoc(obj) or "").strip():
                undocumented.add(f"{obj.__module__}.{obj.__qualname__}")
    assert not undocumented, sorted(undocumented)
