"""`gptcli serve`'s flags (app.py adds the command): the work is commands/serve.py's.
Kept beside app.py so each file stays one sitting."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from gptcli import threads
from gptcli.cli.options import Checkpoint, Threads, settings_options
from gptcli.config import GenerateOptions


@settings_options(GenerateOptions, only=("device", "dtype"))
def serve(
    checkpoint: Checkpoint = None,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free one, reported at start).")] = 8000,
    parallel: Annotated[int, typer.Option(help="Outputs decoded together in the continuous batch.")] = 16,
    max_queue: Annotated[int, typer.Option(help="Outputs that may wait for a place in the batch; beyond, 429.")
                         ] = 64,
    api_key: Annotated[Optional[str], typer.Option(
        help="Require 'Authorization: Bearer KEY' on every endpoint but /health [default: $GPTCLI_API_KEY, "
        "else none].", show_default=False)] = None,
    chat_template: Annotated[Optional[Path], typer.Option(
        help="JSON file: system, user, assistant ({content} in each), generation and stop, for "
        "/v1/chat/completions [default: 'User: ...' / 'Assistant:' turns].", show_default=False)] = None,
    cors_origin: Annotated[Optional[list[str]], typer.Option(
        help="Allow browser requests from this origin (repeatable; * for any) [default: CORS off].",
        metavar="ORIGIN", show_default=False)] = None,
    threads_n: Threads = None,
    settings: dict | None = None,
) -> int:
    """Serve a model over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, ...)."""
    threads.use(threads_n)
    from gptcli.commands import serve as command
    from gptcli.console import Console

    options = GenerateOptions(**settings).validate()
    request = command.ServeRequest(checkpoint, host, port, options.device, options.dtype, parallel, max_queue,
                                   api_key, chat_template, [o for o in cors_origin or [] if o])
    return command.run(request, Console().info)

