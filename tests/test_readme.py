"""The README's two set-up commands are exactly what CI runs."""

from __future__ import annotations

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup_commands() -> list[str]:
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = readme.split("## Set up", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_readme_has_exactly_an_install_and_a_test_command_and_ci_runs_them_verbatim():
    commands = _setup_commands()
    assert len(commands) == 2
    install, test = commands
    assert install.startswith("pip install") and "pytest" in test
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read().splitlines()
    assert install in ci and test in ci
    assert ci.index(install) < ci.index(test)
