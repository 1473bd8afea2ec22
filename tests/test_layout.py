"""The layout a newcomer relies on: the CLI reference is current, files and functions stay
short, and the stages never import the commands above them."""

from __future__ import annotations

import ast

from gptcli.clidoc import render

from helpers import REPO

PACKAGE = REPO / "gptcli"


def test_docs_cli_md_is_generated_from_the_current_options():
    assert (REPO / "docs" / "cli.md").read_text(encoding="utf-8") == render(), \
        "docs/cli.md is stale: run `python -m gptcli.clidoc > docs/cli.md`"


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
        if path.parent.name == "commands" or path.name in ("cli.py", "clidoc.py", "__main__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(("gptcli.commands", "gptcli.cli")), f"{path} imports {node.module}"
