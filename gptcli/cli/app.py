"""The `gptcli` command: flags -> request -> commands.X.run(request) -> print the result.

stdout carries only the product (ids, text, JSON); everything else goes to stderr; how
errors become one line and an exit code is entry.py's. The settings' options come from
their definitions in config.py (options.py); the rest are defined here, once. Heavy
modules (torch, tokenizers) are imported inside command bodies so `gptcli --help` stays
fast. The tokenizer sub-app is tokenizer_app.py's.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer

from gptcli import threads
from gptcli.cli import completion, entry, serve_app
from gptcli.cli.entry import stdout_wanted, writing_stdout
from gptcli.cli.options import (
    CORPUS_HELP,
    Checkpoint,
    Json,
    Overwrite,
    Prompt,
    TextField,
    Threads,
    complete_from,
    settings_options,
)
from gptcli.cli.tokenizer_app import tokenizer_app
from gptcli.config import (
    ARCHS,
    DEFAULT_PRESET,
    PRESETS,
    AttentionOptions,
    EvalOptions,
    GenerateOptions,
    ModelConfig,
    SampleConfig,
    TrainConfig,
)
from gptcli.errors import ReportedElsewhere
from gptcli.store.readers import dumps

app = typer.Typer(name="gptcli", help="Train a small GPT on your own text and generate from it.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
app.add_typer(tokenizer_app, name="tokenizer")
app.command("serve")(serve_app.serve)
completion.register()


def _version(value: bool) -> None:
    if value:
        from gptcli import __version__

        print(f"gptcli {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    install_completion: Annotated[bool, typer.Option("--install-completion", callback=completion.install_option,
                                                     is_eager=True,
                                                     help="Install tab completion for this shell (bash, zsh or fish).")
                                  ] = False,
    show_completion: Annotated[bool, typer.Option("--show-completion", callback=completion.show_option,
                                                  is_eager=True,
                                                  help="Print this shell's completion script, to install it by hand.")
                               ] = False,
) -> None:
    entry.state["debug"] = debug


def _console(quiet: bool = False):
    from gptcli.console import Console

    return Console(quiet=quiet)


def _print(result, as_json: bool, indent: int | None = None) -> None:
    """The product, on stdout: a result's JSON or its text."""
    with writing_stdout():
        print(dumps(result.to_json(), indent=indent) if as_json else result.to_text(),
              flush=True)


# -- train -------------------------------------------------------------------------


@app.command()
@settings_options(ModelConfig, TrainConfig)
def train(
    paths: Annotated[Optional[list[str]], typer.Argument(help=CORPUS_HELP, show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Run folder [default: checkpoints/<corpus>-<time>].", show_default=False)] = None,
    resume: Annotated[Optional[Path], typer.Option(
        help="Continue the run in this folder exactly where it stopped.", show_default=False)] = None,
    init: Annotated[Optional[Path], typer.Option(
        help="Start from this run folder's weights, shape and tokenizer (fine-tune), with a fresh optimizer; "
        "shape flags that disagree with it are refused.",
        show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option(
        help="Replace an existing run folder at --out (the old one stays until the new run ends).")] = False,
    tokenizer: Annotated[Optional[Path], typer.Option(
        help="tokenizer.json (or its folder) to use [default: ./tokenizer/, trained there if missing].",
        show_default=False)] = None,
    val: Annotated[Optional[list[str]], typer.Option(
        help="Validation text (files/folders); default: the end of the corpus.", show_default=False)] = None,
    allow_corpus_change: Annotated[bool, typer.Option(
        "--allow-corpus-change", help="With --resume: continue although the corpus differs from the run's.")] = False,
    preset: Annotated[Optional[str], typer.Option(
        help=f"Model shape and training defaults: {', '.join(PRESETS)} [default: {DEFAULT_PRESET}].",
        show_default=False, autocompletion=complete_from(PRESETS))] = None,
    text_field: TextField = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout at the end.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr.")] = False,
    threads_n: Threads = None,
    settings: dict | None = None,
) -> None:
    """Train a GPT on text files: tokenizer, token cache, model and run folder in one go."""
    threads.use(threads_n)
    from gptcli.commands import train as command

    if json_out:
        stdout_wanted()
    console = _console(quiet)
    result = command.run(command.TrainRequest(
        paths=list(paths or []), preset=preset, settings=settings, out=out, resume=resume, init=init,
        overwrite=overwrite, tokenizer=tokenizer, val=list(val or []), allow_corpus_change=allow_corpus_change,
        text_field=text_field),
        console)
    if not result.main:  # another rank of a torchrun job: rank 0 reports
        if result.exit_code:
            raise ReportedElsewhere(result.exit_code)
        return
    console.info(result.to_text())
    if json_out:
        _print(result, as_json=True)
    if result.exit_code:
        raise typer.Exit(result.exit_code)


# -- generate ----------------------------------------------------------------------


@app.command()
@settings_options(SampleConfig, GenerateOptions)
def generate(
    checkpoint: Checkpoint = None,
    prompt: Prompt = None,
    prompts: Annotated[Optional[str], typer.Option(
        help="File (or -) with one prompt per line, or JSON lines with a \"prompt\" field; generated in batches.",
        show_default=False)] = None,
    greedy: Annotated[bool, typer.Option("--greedy", help="Always take the most likely token (--temperature 0).")
                      ] = False,
    no_stream: Annotated[bool, typer.Option("--no-stream", help="Print the text at the end, not as it comes.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON record per output on stdout.")] = False,
    threads_n: Threads = None,
    settings: dict | None = None,
) -> None:
    """Generate text from a trained model. stdout carries only the generated text (or JSON)."""
    threads.use(threads_n)
    from gptcli.commands import generate as command

    stdout_wanted()
    req = command.request(checkpoint, prompt, prompts, greedy, stream=not no_stream, json_lines=json_out,
                          settings=settings)
    with writing_stdout():
        command.run(req, sys.stdout, _console())


# -- eval --------------------------------------------------------------------------


@app.command("eval")
@settings_options(EvalOptions)
def eval_cmd(
    paths: Annotated[list[str], typer.Argument(help=CORPUS_HELP)],
    checkpoint: Checkpoint = None,
    text_field: TextField = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the figures as JSON on stdout.")] = False,
    threads_n: Threads = None,
    settings: dict | None = None,
) -> None:
    """Score text with a model: tokens, loss, perplexity, bits per byte, next-token accuracy."""
    threads.use(threads_n)
    from gptcli.commands import eval as command

    stdout_wanted()
    options = EvalOptions(**settings).validate()
    result = command.run(command.EvalRequest(paths, checkpoint, options, text_field), _console())
    _print(result, json_out)


# -- compare and plot ---------------------------------------------------------------


@app.command()
@settings_options(ModelConfig, TrainConfig, exclude=("arch",))
def compare(
    paths: Annotated[list[str], typer.Argument(help=CORPUS_HELP.replace("; or - for stdin", ""))],
    arch: Annotated[Optional[list[str]], typer.Option(
        help=f"An architecture to train; repeatable [default: all of {', '.join(ARCHS)}].", show_default=False)
                    ] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Folder for the runs (DIR/<arch>/), summary.json, curves.png and position.png "
        "[default: checkpoints/compare-<corpus>-<time>].", show_default=False)] = None,
    preset: Annotated[Optional[str], typer.Option(
        help=f"The size every architecture matches: {', '.join(PRESETS)} [default: {DEFAULT_PRESET}].",
        show_default=False, autocompletion=complete_from(PRESETS))] = None,
    val: Annotated[Optional[list[str]], typer.Option(
        help="Validation text (files/folders); default: the end of the corpus.", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace the runs of an earlier comparison in --out.")] = False,
    text_field: TextField = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON instead of a table.")
                        ] = False,
    threads_n: Threads = None,
    settings: dict | None = None,
) -> None:
    """Train GPT, LSTM, GRU and RNN models of the same size on the same text with one recipe (AdamW unless
    --optimizer is given), and compare them."""
    threads.use(threads_n)
    from gptcli.commands import compare as command
    from gptcli.workspace import default_run_folder

    stdout_wanted()
    console = _console()
    result = command.run(command.CompareRequest(
        paths=list(paths), archs=list(arch or ARCHS), out=out or default_run_folder(paths, prefix="compare-"),
        preset=preset, settings=settings, val=list(val or []), overwrite=overwrite,
        text_field=text_field), console)
    if sys.stderr.isatty():
        from gptcli import plots

        console.info(plots.terminal(result.curves(), "validation bits per byte", "millions of tokens seen",
                                    "bits/byte"))
    console.info(f"wrote {result.out / 'summary.json'}, curves.png and position.png")
    _print(result, json_out, indent=2 if json_out else None)


@app.command()
def plot(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (with a metrics.jsonl).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The PNG to write.")] = Path("curves.png"),
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the curves' numbers as JSON on stdout.")] = False,
) -> None:
    """Draw training and validation curves of runs: a PNG, and a chart on a terminal."""
    from gptcli.commands import plot as command

    result = command.run(command.PlotRequest(list(runs), out, overwrite))
    console = _console()
    if sys.stderr.isatty():
        console.info(result.terminal())
    console.info(result.to_text())
    if json_out:
        _print(result, as_json=True)


# -- attention ---------------------------------------------------------------------


@app.command()
@settings_options(AttentionOptions)
def attention(
    checkpoint: Checkpoint = None,
    prompt: Prompt = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Also draw heatmaps (layers x heads, or those chosen) into this PNG.",
        show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the attention weights as JSON on stdout.")] = False,
    threads_n: Threads = None,
    settings: dict | None = None,
) -> None:
    """Show what each attention head attends to for a prompt: per token, the tokens it weighs most."""
    threads.use(threads_n)
    from gptcli.commands import attention as command
    from gptcli.commands.inputs import prompt_text

    stdout_wanted()
    options = AttentionOptions(**settings).validate()
    result = command.run(command.AttentionRequest(checkpoint, prompt_text(prompt), options, out, overwrite), _console())
    if not json_out and sys.stdout.isatty():
        from rich.console import Console as RichConsole

        with writing_stdout():
            RichConsole(highlight=False).print(result.to_rich())
        return
    _print(result, json_out)


# -- Hugging Face and llama.cpp interop --------------------------------------------


@app.command("import-hf")
def import_hf(
    src: Annotated[Path, typer.Argument(
        help="HF GPT-2 folder: config.json, model.safetensors, and tokenizer.json or vocab.json + merges.txt.")],
    out: Annotated[Path, typer.Argument(help="Run folder to create.")],
    overwrite: Overwrite = False,
    json_out: Json = False,
) -> None:
    """Import a local Hugging Face GPT-2 checkpoint as a gptcli run folder (never unpickles)."""
    from gptcli.commands import hf

    _convert(lambda: hf.import_hf(hf.HFRequest(src, out, overwrite)), json_out)


@app.command("export-hf")
def export_hf(
    run: Annotated[Path, typer.Argument(help="A gptcli run folder.")],
    out: Annotated[Path, typer.Argument(help="Folder to write for transformers' from_pretrained.")],
    overwrite: Overwrite = False,
    json_out: Json = False,
) -> None:
    """Export a run folder as a Hugging Face GPT-2 folder (config, safetensors, tokenizer)."""
    from gptcli.commands import hf

    _convert(lambda: hf.export_hf(hf.HFRequest(run, out, overwrite)), json_out)


@app.command("export-gguf")
def export_gguf(
    run: Annotated[Path, typer.Argument(help="A gptcli run folder (a GPT with learned positions).")],
    out: Annotated[Path, typer.Argument(help="The .gguf file to write, for llama.cpp and ollama.")],
    dtype: Annotated[str, typer.Option(help="The matrices' type: float32, float16 or q8_0 (8-bit blocks).",
                                       autocompletion=complete_from(("float32", "float16", "q8_0")))] = "float32",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing OUT file.")] = False,
    json_out: Json = False,
) -> None:
    """Export a run folder as a GGUF file for llama.cpp (architecture gpt2; needs the gguf package)."""
    from gptcli.commands import export_gguf as command

    _convert(lambda: command.run(command.ExportGGUFRequest(run, out, dtype, overwrite)), json_out)


def _convert(make: Callable[[], object], json_out: bool) -> None:
    """import-hf, export-hf and export-gguf: the result `make` returns, reported on stderr
    (and as JSON on stdout)."""
    if json_out:
        stdout_wanted()
    result = make()
    _console().info(result.to_text())
    if json_out:
        _print(result, as_json=True)


# -- info --------------------------------------------------------------------------


@app.command()
def info(run: Annotated[Path, typer.Argument(help="A run folder.")], json_out: Json = False) -> None:
    """Show a run folder's model config, parameter count and training summary."""
    from gptcli.commands import info as command

    stdout_wanted()
    _print(command.run(command.InfoRequest(run)), json_out, indent=2)


def main() -> None:
    """The CLI; ends by raising SystemExit with the exit code (callers in this process may catch it)."""
    entry.run(app)


def process_main() -> None:
    """The `gptcli` program: main(), then the process ends at once (entry.end_process)."""
    try:
        main()
    except SystemExit as e:
        entry.end_process(e.code)
