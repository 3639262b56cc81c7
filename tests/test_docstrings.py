"""Every public function, class and method of the package has a docstring, except the names still
listed in ``STILL_MISSING``, and that list can only shrink.

The check is ``benchmarks/code_structure.missing_docstrings`` (imported by path, so the benchmark
and this test use one definition of "public" and "documented"): public means a name without a
leading underscore, in a module that is not private, and methods of public classes.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Public names without a docstring, as ``"path qualified.name"``: the list can only shrink (remove
#: a name here when it gains a docstring).
STILL_MISSING: frozenset[str] = frozenset()


def _code_structure():
    path = ROOT / "benchmarks" / "code_structure.py"
    spec = importlib.util.spec_from_file_location("code_structure", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _undocumented() -> set[str]:
    """``missing_docstrings`` of the package, without line numbers (they move with every edit)."""
    structure = _code_structure()
    found = set()
    for entry in structure.missing_docstrings(structure._modules()):
        where, name = entry.split(" ", 1)
        path = re.sub(r":\d+$", "", where).replace(os.sep, "/")
        found.add(f"{path} {name}")
    return found


def test_public_names_have_docstrings():
    new = sorted(_undocumented() - STILL_MISSING)
    assert not new, (
        "public names without a docstring (write one in Hugging Face form: a summary line, Args:, "
        "Returns:, Raises:):\n  " + "\n  ".join(new)
    )


def test_allow_list_is_current():
    documented = sorted(STILL_MISSING - _undocumented())
    assert not documented, (
        "these names have a docstring now (or are gone): remove them from STILL_MISSING in "
        "tests/test_docstrings.py:\n  " + "\n  ".join(documented)
    )


def test_the_check_sees_a_missing_docstring(tmp_path):
    """The check itself: it reports an undocumented public function and method, and nothing private."""
    import ast

    source = (
        "def public():\n    pass\n\n"
        "def _private():\n    pass\n\n"
        "class Documented:\n    '''Doc.'''\n\n    def method(self):\n        pass\n\n"
        "    def _helper(self):\n        pass\n"
    )
    found = _code_structure().missing_docstrings({"pkg/module.py": ast.parse(source)})
    assert [entry.split(" ", 1)[1] for entry in found] == ["public", "Documented.method"]
