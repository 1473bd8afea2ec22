"""`gptcli tokenizer train|encode|decode`: the tokenizer's sub-app, flags only.

Kept beside app.py (which adds it as `tokenizer`) so each file stays one sitting; the
work is commands/tokenizer.py's, and the stdout rules are the same as app.py's.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from gptcli import threads, workspace
from gptcli.cli.entry import stdout_wanted, writing_stdout
from gptcli.cli.options import CORPUS_HELP, TextField, Threads, TokenizerPath, settings_options
from gptcli.config import ModelConfig

tokenizer_app = typer.Typer(help="Train, and use, a byte-level BPE tokenizer.", no_args_is_help=True)


@tokenizer_app.command("train")
@settings_options(ModelConfig, only=("vocab_size",))
def tokenizer_train(
    paths: Annotated[list[str], typer.Argument(help=CORPUS_HELP)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write tokenizer.json into.")
                   ] = workspace.TOKENIZER,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing tokenizer.json.")] = False,
    text_field: TextField = None,
    threads_n: Threads = None,
    settings: dict | None = None,
) -> None:
    """Train a byte-level BPE tokenizer on text."""
    threads.tokenizer_threads(threads_n)
    from gptcli.commands import tokenizer as command
    from gptcli.console import Console

    console = Console()
    vocab_size = ModelConfig(**settings).validate().vocab_size  # the default, or the checked value given
    req = command.TrainTokenizerRequest(paths, vocab_size, out, overwrite, text_field)
    console.info(command.train(req, console).to_text())


@tokenizer_app.command("encode")
def tokenizer_encode(
    tokenizer: TokenizerPath = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of space-separated ids.")] = False,
) -> None:
    """Text on stdin -> token ids on stdout."""
    from gptcli.commands import tokenizer as command
    from gptcli.commands.inputs import stdin_stream

    stdout_wanted()
    with writing_stdout():
        command.encode(command.EncodeRequest(tokenizer, stdin_stream, json_out), sys.stdout)


@tokenizer_app.command("decode")
def tokenizer_decode(tokenizer: TokenizerPath = None) -> None:
    """Token ids on stdin (space-separated or a JSON list) -> text on stdout."""
    from gptcli.commands import tokenizer as command
    from gptcli.commands.inputs import read_stdin_text

    stdout_wanted()
    text = command.decode(command.DecodeRequest(tokenizer, read_stdin_text)).to_text()
    with writing_stdout():
        sys.stdout.write(text)
        sys.stdout.flush()
