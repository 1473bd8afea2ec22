"""The layout a newcomer relies on: the CLI reference is current, files and functions stay
short, and the stages never import the commands above them."""

from __future__ import annotations

import ast

from gptcli.cli.clidoc import render

from helpers import REPO

PACKAGE = REPO / "gptcli"


def test_docs_cli_md_is_generated_from_the_current_options():
    assert (REPO / "docs" / "cli.md").read_text(encoding="utf-8") == render(), \
        "docs/cli.md is stale: run `python -m gptcli.cli.clidoc > docs/cli.md`"


def _modules():
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_over_400_lines_and_no_function_over_80():
    for path in _modules():
        text = path.read_text(encoding="utf-8")
        assert len(text.splitlines()) <= 400, path
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno - node.lineno + 1 <= 80, f"{path}:{node.lineno} {node.name}"


def test_stages_never_import_commands_or_the_cli():
    for path in _modules():
        if path.parent.name in ("commands", "cli") or path.name == "__main__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(("gptcli.commands", "gptcli.cli")), f"{path} imports {node.module}"


def _mapped_modules() -> set[str]:
    """The module paths docs/internals.md's layout lists: names under a folder line
    (`generation/`) belong to it, by indentation."""
    text = (REPO / "docs" / "internals.md").read_text(encoding="utf-8")
    block = text.split("## The layout", 1)[1].split("```", 2)[1]
    found, folders = set(), []  # folders: (indent, name) of the open folder lines
    for line in block.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        while folders and folders[-1][0] >= indent:
            folders.pop()
        first = line.split()[0]
        if first.endswith("/"):
            folders.append((indent, first.rstrip("/")))
            continue
        names = [w for w in line.split() if w.endswith(".py")] if first.endswith(".py") else []
        prefix = "/".join(name for _, name in folders[1:])  # below gptcli/
        found |= {f"{prefix}/{n}" if prefix else n for n in names}
    return found


def test_the_internals_map_lists_every_module():
    modules = {p.relative_to(PACKAGE).as_posix() for p in _modules()
               if p.name not in ("__main__.py",) and not (p.name == "__init__.py" and p.parent != PACKAGE)}
    mapped = _mapped_modules()
    assert not modules - mapped, f"docs/internals.md's layout misses {sorted(modules - mapped)}"
    assert not mapped - modules, f"docs/internals.md's layout lists missing modules: {sorted(mapped - modules)}"


def test_docs_run_folder_md_holds_the_current_trainer_state_fields():
    from gptcli.cli.clidoc import trainer_state_table

    assert trainer_state_table() in (REPO / "docs" / "run-folder.md").read_text(encoding="utf-8"), \
        "docs/run-folder.md's trainer_state table is stale: paste `python -m gptcli.cli.clidoc --trainer-state`"
