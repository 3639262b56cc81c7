"""Structure of the package, measured: what issue 17 (one architecture) asked to be reported before
and after the redesign.

    python benchmarks/code_structure.py [--json out.json]

Prints, for ``hf_task_distill/``:
- the largest class and the longest function (lines without their own docstring, with where they
  are), and how many exceed the aims (a class over 250 lines, a function over 60);
- how many modules mention a stage name as a string literal (``"distill"``, ...);
- import cycles between the package's modules (grimp; every import, lazy ones included);
- dead code as vulture reports it at 80% confidence or more;
- public functions, classes and methods without a docstring.

``duplicates`` (the tool library's command) reports the repeated-code pairs; run it beside this.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "hf_task_distill")
STAGE_NAMES = ("teacher", "transfer", "distill", "baseline", "finetune", "evaluate", "publish")
CLASS_AIM, FUNCTION_AIM = 250, 60


def _modules() -> dict[str, ast.Module]:
    trees = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    trees[os.path.relpath(path, ROOT)] = ast.parse(f.read(), path)
    return trees


def _span(node: ast.AST) -> int:
    """Lines of a class or function, decorators included, docstrings not (its own and those of what
    it defines: a docstring in the HF ``Args``/``Returns``/``Raises`` form is documentation, not length)."""
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    lines = node.end_lineno - first + 1
    for inner in ast.walk(node):
        body = getattr(inner, "body", None)
        if not isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or not body:
            continue
        first_statement = body[0]
        if isinstance(first_statement, ast.Expr) and isinstance(first_statement.value, ast.Constant):
            if isinstance(first_statement.value.value, str):
                lines -= first_statement.end_lineno - first_statement.lineno + 1
    return lines


def sizes(trees: dict[str, ast.Module]) -> dict[str, object]:
    """The largest class and longest function (``[lines, "path:line name"]``) and the counts over the aims."""
    classes, functions = [], []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            where = f"{path}:{node.lineno if hasattr(node, 'lineno') else 0}"
            if isinstance(node, ast.ClassDef):
                classes.append((_span(node), f"{where} {node.name}"))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((_span(node), f"{where} {node.name}"))
    classes.sort(reverse=True)
    functions.sort(reverse=True)
    return {
        "largest_class": list(classes[0]),
        "longest_function": list(functions[0]),
        f"classes_over_{CLASS_AIM}": sum(n > CLASS_AIM for n, _ in classes),
        f"functions_over_{FUNCTION_AIM}": sum(n > FUNCTION_AIM for n, _ in functions),
    }


#: Calls whose string argument names a stage (a manifest read, a stage's folder or outputs, a run).
STAGE_CALLS = {"manifest", "outputs", "stage_dir", "run_stage", "get_stage", "run", "stages_for_command"}


def stage_mentions(trees: dict[str, ast.Module]) -> list[str]:
    """Modules that name a stage *as a stage*: a stage name passed to a stage call
    (:data:`STAGE_CALLS`: ``manifest("distill")``...), or a tuple/list/set of two or more stage names.
    (A bare ``"teacher"`` is also the teacher's role in a card or a log line: not counted.)"""
    found = []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", getattr(node.func, "id", None))
                args = [a for a in node.args if isinstance(a, ast.Constant)]
                if name in STAGE_CALLS and any(a.value in STAGE_NAMES for a in args):
                    found.append(path)
                    break
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                names = [e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in STAGE_NAMES]
                if len(names) >= 2:
                    found.append(path)
                    break
    return found


def _documented_methods(trees: dict[str, ast.Module]) -> dict[str, tuple[set[str], list[str]]]:
    """Per class name of the package: its documented methods and its bases' names."""
    classes = {}
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                documented = {
                    m.name
                    for m in node.body
                    if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)) and ast.get_docstring(m)
                }
                bases = [getattr(b, "id", getattr(b, "attr", "")) for b in node.bases]
                classes[node.name] = (documented, bases)
    return classes


def missing_docstrings(trees: dict[str, ast.Module]) -> list[str]:
    """Public functions, classes and methods (of public classes) without a docstring. A method that
    overrides a documented method of a package class it derives from has that docstring (as
    ``inspect.getdoc`` finds it)."""
    missing = []
    classes = _documented_methods(trees)

    def inherited(cls: str | None, method: str) -> bool:
        seen, todo = set(), list(classes.get(cls, ((), []))[1]) if cls else []
        while todo:
            base = todo.pop()
            if base in seen or base not in classes:
                continue
            seen.add(base)
            if method in classes[base][0]:
                return True
            todo.extend(classes[base][1])
        return False

    def visit(body, prefix: str, path: str, cls: str | None = None):
        for node in body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if node.name.startswith("_"):
                continue
            if ast.get_docstring(node) is None and not inherited(cls, node.name):
                missing.append(f"{path}:{node.lineno} {prefix}{node.name}")
            if isinstance(node, ast.ClassDef):
                visit(node.body, f"{node.name}.", path, node.name)

    for path, tree in trees.items():
        if "/_" in path.replace(os.sep, "/").replace("/__init__.py", ""):
            continue  # private modules
        visit(tree.body, "", path)
    return missing


def _module_level(tree: ast.Module):
    """The statements run on import (not those inside functions or classes' methods)."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            continue  # for type checkers only: never run
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            todo.extend(ast.iter_child_nodes(node))


def _runnable(tree: ast.Module):
    """Every statement that can run (those in ``if TYPE_CHECKING:`` blocks never do)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            continue
        yield node
        todo.extend(ast.iter_child_nodes(node))


def _imports(trees: dict[str, ast.Module], *, lazy: bool = True) -> dict[str, set[str]]:
    """Each module's imports of the package's own modules (with ``lazy``, those inside functions too)."""
    names = {p[: -len(".py")].replace(os.sep, ".").removesuffix(".__init__"): p for p in trees}
    graph: dict[str, set[str]] = {name: set() for name in names}
    for name, path in names.items():
        package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
        for node in _runnable(trees[path]) if lazy else _module_level(trees[path]):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            for target in targets:
                while target and target not in names:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
                    break
    return graph


def import_cycles(trees: dict[str, ast.Module], *, lazy: bool = True) -> list[list[str]]:
    """Groups of the package's modules that import each other, directly or through others (the
    strongly connected components of the import graph with more than one module; a package's
    ``__init__`` re-exporting its submodules is not counted as importing them back)."""
    graph = _imports(trees, lazy=lazy)
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def connect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            connect(v)
    return groups


#: Names that are called by a framework, not by the package: Trainer callback hooks and overrides,
#: the module protocol, the loss registry's decorated builders, the public API's entry points.
VULTURE_IGNORED = "on_*,__getattr__,__dir__,prediction_step,from_run,close_progress_bars,transform"


def dead_code() -> list[str]:
    """Functions, classes, methods and properties that vulture (60% confidence) finds no use of,
    apart from :data:`VULTURE_IGNORED`; and the private helpers the issue named (``_keep_as_list``...)."""
    done = subprocess.run(
        [sys.executable, "-m", "vulture", "hf_task_distill", "--min-confidence", "60"]
        + ["--ignore-decorators", "@register_*", "--ignore-names", VULTURE_IGNORED],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    kinds = ("unused function", "unused class", "unused method", "unused property")
    return [line for line in done.stdout.splitlines() if any(k in line for k in kinds)]


def measure() -> dict[str, object]:
    """Every figure above, as one mapping."""
    trees = _modules()
    mentions = stage_mentions(trees)
    undocumented = missing_docstrings(trees)
    return {
        "modules": len(trees),
        "lines": sum(t.body[-1].end_lineno if t.body else 0 for t in trees.values()),
        **sizes(trees),
        "modules_mentioning_a_stage": len(mentions),
        "import_cycles": import_cycles(trees),
        "import_cycles_on_import": import_cycles(trees, lazy=False),
        "dead_code": dead_code(),
        "public_without_docstring": len(undocumented),
        "public_without_docstring_names": undocumented,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    figures = measure()
    for key, value in figures.items():
        if key.endswith("_names"):
            continue
        print(f"{key}: {value}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
