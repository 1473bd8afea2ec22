"""The `gptcli` command: parse flags, build configs, call one function below, print.

stdout carries only the product (ids, text, JSON); everything else goes to stderr. Exit
codes: 0 ok, 1 runtime failure, 2 bad input, 130/143 interrupted. Heavy modules (torch,
tokenizers) are imported inside command bodies so `gptcli --help` stays fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from gptcli.config import DEFAULT_PRESET, PRESETS, ModelConfig, TrainConfig, parse_duration, preset
from gptcli.errors import GptcliError, UsageError

app = typer.Typer(
    name="gptcli",
    help="Train a small GPT on your own text and generate from it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
tokenizer_app = typer.Typer(help="Train, and use, a byte-level BPE tokenizer.", no_args_is_help=True)
app.add_typer(tokenizer_app, name="tokenizer")

_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        from gptcli import __version__

        print(f"gptcli {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    _state["debug"] = debug


@contextlib.contextmanager
def _stdout_reader_may_leave():
    """`gptcli ... | head` closes the pipe early: that is the reader's choice, not an
    error. Stop quietly with exit 0 (click's own handling would exit 1)."""
    try:
        yield
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the final flush at exit cannot fail again
        raise typer.Exit(0) from None


def _console(quiet: bool = False):
    from gptcli.console import Console

    return Console(quiet=quiet)


# -- train -------------------------------------------------------------------------

PANEL_DATA, PANEL_MODEL, PANEL_OPT, PANEL_RUN = "Data", "Model", "Optimization", "Run"


@app.command()
def train(
    paths: Annotated[Optional[list[str]], typer.Argument(help="Text files, folders (searched recursively) or - for stdin.", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run folder [default: checkpoints/<corpus>-<time>].", rich_help_panel=PANEL_RUN, show_default=False)] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this folder exactly where it stopped.", rich_help_panel=PANEL_RUN, show_default=False)] = None,
    init: Annotated[Optional[Path], typer.Option(help="Start from this run folder's weights and tokenizer (fine-tune), with a fresh optimizer.", rich_help_panel=PANEL_RUN, show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run folder at --out.", rich_help_panel=PANEL_RUN)] = False,
    tokenizer: Annotated[Optional[Path], typer.Option(help="tokenizer.json (or its folder) to use [default: ./tokenizer/, trained there if missing].", rich_help_panel=PANEL_DATA, show_default=False)] = None,
    vocab_size: Annotated[Optional[int], typer.Option(help="Vocabulary size when a tokenizer is trained [default: 4096].", rich_help_panel=PANEL_DATA, show_default=False)] = None,
    val: Annotated[Optional[list[str]], typer.Option(help="Validation text (files/folders); default: the end of the corpus.", rich_help_panel=PANEL_DATA, show_default=False)] = None,
    val_fraction: Annotated[float, typer.Option(help="Fraction of the corpus tokens, taken from the end, held out for validation.", rich_help_panel=PANEL_DATA)] = 0.1,
    preset_name: Annotated[str, typer.Option("--preset", help=f"Model shape and training defaults: {', '.join(PRESETS)}.", rich_help_panel=PANEL_MODEL)] = DEFAULT_PRESET,
    n_layer: Annotated[Optional[int], typer.Option(help="Transformer blocks.", rich_help_panel=PANEL_MODEL, show_default=False)] = None,
    n_head: Annotated[Optional[int], typer.Option(help="Attention heads.", rich_help_panel=PANEL_MODEL, show_default=False)] = None,
    n_embd: Annotated[Optional[int], typer.Option(help="Embedding width.", rich_help_panel=PANEL_MODEL, show_default=False)] = None,
    block_size: Annotated[Optional[int], typer.Option(help="Context length in tokens.", rich_help_panel=PANEL_MODEL, show_default=False)] = None,
    dropout: Annotated[Optional[float], typer.Option(help="Dropout probability.", rich_help_panel=PANEL_MODEL, show_default=False)] = None,
    bias: Annotated[Optional[bool], typer.Option("--bias/--no-bias", help="Biases in Linear and LayerNorm layers [default: bias].", rich_help_panel=PANEL_MODEL, show_default=False)] = None,
    pos_encoding: Annotated[Optional[str], typer.Option(help="learned (GPT-2) or sinusoidal (fixed, not stored).", rich_help_panel=PANEL_MODEL, show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Sequences per micro-batch.", rich_help_panel=PANEL_OPT, show_default=False)] = None,
    grad_accum: Annotated[Optional[int], typer.Option(help="Micro-batches per optimizer step [default: 1].", rich_help_panel=PANEL_OPT, show_default=False)] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate.", rich_help_panel=PANEL_OPT, show_default=False)] = None,
    min_lr: Annotated[Optional[float], typer.Option(help="Final learning rate of the cosine decay [default: lr/10].", rich_help_panel=PANEL_OPT, show_default=False)] = None,
    warmup_steps: Annotated[Optional[int], typer.Option(help="Linear warmup steps.", rich_help_panel=PANEL_OPT, show_default=False)] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="AdamW weight decay on matrices [default: 0.1].", rich_help_panel=PANEL_OPT, show_default=False)] = None,
    grad_clip: Annotated[Optional[float], typer.Option(help="Clip the gradient norm to this; 0 disables [default: 1.0].", rich_help_panel=PANEL_OPT, show_default=False)] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many optimizer steps [default: 2000 if no other limit].", rich_help_panel=PANEL_RUN, show_default=False)] = None,
    max_time: Annotated[Optional[str], typer.Option(help="Stop after this much training time, e.g. 90s, 10m, 1h.", rich_help_panel=PANEL_RUN, show_default=False)] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Stop after this many passes over the training tokens.", rich_help_panel=PANEL_RUN, show_default=False)] = None,
    eval_interval: Annotated[Optional[int], typer.Option(help="Steps between evaluations and checkpoints [default: 200].", rich_help_panel=PANEL_RUN, show_default=False)] = None,
    eval_iters: Annotated[Optional[int], typer.Option(help="Batches per evaluation [default: 20].", rich_help_panel=PANEL_RUN, show_default=False)] = None,
    patience: Annotated[Optional[int], typer.Option(help="Stop after this many evaluations without a better validation loss.", rich_help_panel=PANEL_RUN, show_default=False)] = None,
    log_interval: Annotated[Optional[int], typer.Option(help="Steps between progress updates and metrics lines [default: 50].", rich_help_panel=PANEL_RUN, show_default=False)] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or mps [default: auto].", rich_help_panel=PANEL_RUN, show_default=False)] = None,
    dtype: Annotated[Optional[str], typer.Option(help="auto, float32, bfloat16 or float16 [default: auto].", rich_help_panel=PANEL_RUN, show_default=False)] = None,
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="Use torch.compile (falls back to eager if it fails) [default: no].", rich_help_panel=PANEL_RUN, show_default=False)] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed [default: 1337].", rich_help_panel=PANEL_RUN, show_default=False)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout at the end.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr.")] = False,
) -> None:
    """Train a GPT on text files: tokenizer, token cache, model and run folder in one go."""
    chosen = preset(preset_name)
    model_over = {k: v for k, v in dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                                         dropout=dropout, bias=bias, pos_encoding=pos_encoding).items() if v is not None}
    train_over = {k: v for k, v in dict(
        batch_size=batch_size, grad_accum=grad_accum, lr=lr, min_lr=min_lr, warmup_steps=warmup_steps,
        weight_decay=weight_decay, grad_clip=grad_clip, max_steps=max_steps,
        max_time=parse_duration(max_time) if max_time is not None else None, epochs=epochs,
        eval_interval=eval_interval, eval_iters=eval_iters, patience=patience, log_interval=log_interval,
        device=device, dtype=dtype, compile=compile, seed=seed).items() if v is not None}
    model_cfg = ModelConfig(**{**chosen["model"], **model_over})
    train_cfg = TrainConfig(**{**chosen["train"], **train_over})
    if resume is not None and (out is not None or overwrite or init is not None or tokenizer is not None):
        raise UsageError("--resume continues a run in place: it takes no --out, --overwrite, --init or --tokenizer")
    explicit = set(model_over) | set(train_over) | ({"preset"} if preset_name != DEFAULT_PRESET else set())

    from gptcli.pipeline import TrainRequest, train as run_training

    req = TrainRequest(paths=list(paths or []), model=model_cfg, train=train_cfg, preset=preset_name, out=out,
                       resume=resume, init=init, overwrite=overwrite, tokenizer=tokenizer, vocab_size=vocab_size,
                       val=list(val or []), val_fraction=val_fraction, explicit=explicit)
    console = _console(quiet)
    result = run_training(req, console)
    s = result.summary
    bpb = s.get("best_val_bpb")
    best = f"best val loss {s['best_val_loss']:.4f}" if s.get("best_val_loss") is not None else "no evaluation yet"
    console.info(f"done ({result.reason}): step {s.get('steps')}, {best}" + (f" ({bpb:.4f} bits/byte)" if bpb else "")
                 + f" -> {result.run}")
    if result.reason == "interrupted":
        console.info(f"checkpoint saved; continue with: gptcli train --resume {result.run}")
    if json_out:
        print(json.dumps({"run": str(result.run), "stop_reason": result.reason, **s}))
    if result.reason == "interrupted":
        import signal

        raise typer.Exit(143 if result.signal == signal.SIGTERM else 130)


# -- generate ----------------------------------------------------------------------

PANEL_PROMPT, PANEL_STRATEGY, PANEL_OUTPUT = "Prompts", "Strategy", "Output"


@app.command()
def generate(
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", "-c", help="Run folder [default: the newest under ./checkpoints/].", show_default=False)] = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="The prompt; - reads it from stdin. Without it, piped stdin is the prompt.", show_default=False)] = None,
    prompts: Annotated[Optional[str], typer.Option(help="File (or -) with one prompt per line, or JSON lines with a \"prompt\" field; generated in batches.", show_default=False)] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", help="Tokens to generate per output.")] = 256,
    greedy: Annotated[bool, typer.Option("--greedy", help="Always take the most likely token (same as --temperature 0).")] = False,
    temperature: Annotated[Optional[float], typer.Option(help="Sampling temperature; 0 means greedy [default: 0.8].", show_default=False)] = None,
    top_k: Annotated[Optional[int], typer.Option(help="Sample from the k most likely tokens.", show_default=False)] = None,
    top_p: Annotated[Optional[float], typer.Option(help="Sample from the smallest set reaching probability p [default: 0.95 unless --top-k].", show_default=False)] = None,
    repetition_penalty: Annotated[Optional[float], typer.Option(help="Above 1 discourages tokens already in the context [default: 1.0].", show_default=False)] = None,
    num_samples: Annotated[Optional[int], typer.Option(help="Sampled outputs per prompt [default: 1].", show_default=False)] = None,
    beams: Annotated[Optional[int], typer.Option(help="Beam search with this many beams.", show_default=False)] = None,
    length_penalty: Annotated[Optional[float], typer.Option(help="Beam score = log-prob sum / length**this [default: 1.0].", show_default=False)] = None,
    early_stopping: Annotated[Optional[bool], typer.Option("--early-stopping", help="Beam: stop once --beams hypotheses are finished (HF semantics).", show_default=False)] = None,
    num_return: Annotated[Optional[int], typer.Option(help="Beam: best hypotheses to return per prompt [default: 1].", show_default=False)] = None,
    stop: Annotated[Optional[list[str]], typer.Option(help="Cut the output before this string; repeatable.", show_default=False)] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for sampling [default: random, reported by --json].", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option(help="Outputs generated together from --prompts.")] = 8,
    no_stream: Annotated[bool, typer.Option("--no-stream", help="Print the text at the end instead of as it is produced.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON record per output on stdout.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
) -> None:
    """Generate text from a trained model. stdout carries only the generated text (or JSON)."""
    from gptcli.config import sample_config_from_flags

    given = {k: v for k, v in dict(
        temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
        num_samples=num_samples, num_beams=beams, length_penalty=length_penalty, early_stopping=early_stopping,
        num_return=num_return).items() if v is not None}
    if batch_size <= 0:
        raise UsageError(f"--batch-size must be positive, got {batch_size}")
    if prompt is not None and prompts is not None:
        raise UsageError("--prompt and --prompts are exclusive: give one")
    from gptcli.generation import GenerateRequest, generate as run_generate, random_seed, read_prompts

    sample = sample_config_from_flags({**given, "greedy": greedy, "max_new_tokens": max_new_tokens,
                                       "stop": tuple(stop or ()), "seed": seed if seed is not None else random_seed()})
    if prompts is not None:
        texts = read_prompts(prompts, _read_stdin_text)
    elif prompt == "-" or (prompt is None and sys.stdin is not None and not sys.stdin.closed and not sys.stdin.isatty()):
        texts = [_read_stdin_text()]
    else:
        texts = [prompt or ""]
    req = GenerateRequest(checkpoint=checkpoint, prompts=texts, sample=sample, batch_size=batch_size,
                          stream=not no_stream, json_lines=json_out, device=device)
    with _stdout_reader_may_leave():
        run_generate(req, sys.stdout, _console())


# -- eval --------------------------------------------------------------------------


@app.command("eval")
def eval_cmd(
    paths: Annotated[list[str], typer.Argument(help="Text files, folders or - for stdin.")],
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", "-c", help="Run folder [default: the newest under ./checkpoints/].", show_default=False)] = None,
    stride: Annotated[Optional[int], typer.Option(help="Tokens between window starts [default: half the context].", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option(help="Windows per forward pass.")] = 8,
    json_out: Annotated[bool, typer.Option("--json", help="Print the figures as JSON on stdout.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
) -> None:
    """Score text with a model: tokens, loss, perplexity, bits per byte, next-token accuracy."""
    if batch_size <= 0:
        raise UsageError(f"--batch-size must be positive, got {batch_size}")
    from gptcli.evaluation import EvalRequest, evaluate as run_eval

    result = run_eval(EvalRequest(paths, checkpoint, stride, batch_size, device), _console())
    with _stdout_reader_may_leave():
        if json_out:
            print(json.dumps(result))
        else:
            print(f"tokens         {result['tokens']:,}\n"
                  f"bytes          {result['bytes']:,}\n"
                  f"loss           {result['loss']:.4f} nats/token\n"
                  f"perplexity     {result['perplexity']:.2f}\n"
                  f"bits per byte  {result['bits_per_byte']:.4f}\n"
                  f"accuracy       {result['accuracy']:.2%}")


# -- Hugging Face interop ----------------------------------------------------------


@app.command("import-hf")
def import_hf(
    src: Annotated[Path, typer.Argument(help="HF GPT-2 folder: config.json, model.safetensors, and tokenizer.json or vocab.json + merges.txt.")],
    out: Annotated[Path, typer.Argument(help="Run folder to create.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing OUT.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")] = False,
) -> None:
    """Import a local Hugging Face GPT-2 checkpoint as a gptcli run folder (never unpickles)."""
    from gptcli.interop import import_hf as run_import

    summary = run_import(src, out, overwrite)
    _console().info(f"imported {src} -> {out} ({summary['params']:,} parameters)")
    if json_out:
        print(json.dumps(summary))


@app.command("export-hf")
def export_hf(
    run: Annotated[Path, typer.Argument(help="A gptcli run folder.")],
    out: Annotated[Path, typer.Argument(help="Folder to write for transformers' from_pretrained.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing OUT.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")] = False,
) -> None:
    """Export a run folder as a Hugging Face GPT-2 folder (config, safetensors, tokenizer)."""
    from gptcli.interop import export_hf as run_export

    summary = run_export(run, out, overwrite)
    _console().info(f"exported {run} -> {out}: load it with GPT2LMHeadModel.from_pretrained and AutoTokenizer.from_pretrained")
    if json_out:
        print(json.dumps(summary))


# -- info --------------------------------------------------------------------------


@app.command()
def info(
    run: Annotated[Path, typer.Argument(help="A run folder.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Show a run folder's model config, parameter count and training summary."""
    from gptcli.checkpoint import describe

    d = describe(run)
    if json_out:
        print(json.dumps(d, indent=2))
        return
    m, t, tr = d["model"], d["tokenizer"], d["training"]
    lines = [
        f"run          {run}",
        f"parameters   {d['params']:,}",
        f"model        {m['n_layer']} layers, {m['n_head']} heads, {m['n_embd']} wide, context {m['block_size']}, "
        f"{m['pos_encoding']} positions, dropout {m['dropout']}, bias {m['bias']}",
        f"tokenizer    {t['vocab_size']} tokens (byte-level BPE)",
    ]
    if tr:
        lines.append(f"trained      {tr.get('steps', 0)} steps, {tr.get('tokens_seen', 0):,} tokens, "
                     f"{tr.get('elapsed_sec', 0):.0f}s on {tr.get('device', '?')} {tr.get('dtype', '')}")
        if tr.get("best_val_loss") is not None:
            bpb = tr.get("best_val_bpb")
            lines.append(f"best val     loss {tr['best_val_loss']:.4f} at step {tr.get('best_step')}"
                         + (f", {bpb:.4f} bits/byte" if bpb else ""))
        if tr.get("corpus"):
            lines.append(f"corpus       {', '.join(tr['corpus'][:5])}" + (" ..." if len(tr["corpus"]) > 5 else ""))
        lines.append(f"resumable    {'yes' if d['resumable'] else 'no'}")
    print("\n".join(lines))


# -- tokenizer ---------------------------------------------------------------------


@tokenizer_app.command("train")
def tokenizer_train(
    paths: Annotated[list[str], typer.Argument(help="Text files, folders or - for stdin.")],
    vocab_size: Annotated[int, typer.Option(help="Vocabulary size, <|endoftext|> and the 256 bytes included.")] = 4096,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write tokenizer.json into.")] = Path("tokenizer"),
    overwrite: Annotated[bool, typer.Option(help="Replace an existing tokenizer.json.")] = False,
) -> None:
    """Train a byte-level BPE tokenizer on text."""
    from gptcli.data import collect_documents, iter_documents_text
    from gptcli.tokenizer import TOKENIZER_FILE, BPETokenizer

    target = out if out.suffix == ".json" else out / TOKENIZER_FILE
    if target.exists() and not overwrite:
        raise UsageError(f"{target} exists: pass --overwrite to replace it")
    console = _console()
    docs = collect_documents(paths, console.warn)
    tok = BPETokenizer.train(iter_documents_text(docs), vocab_size)
    tok.save(target)
    console.info(f"wrote {target} ({tok.vocab_size} tokens)")


def _load_tokenizer(path: Optional[Path]):
    from gptcli.tokenizer import BPETokenizer

    path = path or Path("tokenizer")
    return BPETokenizer.load(path)


TOKENIZER_OPT = typer.Option(help="tokenizer.json, its folder, or a run folder [default: ./tokenizer/].", show_default=False)


@tokenizer_app.command("encode")
def tokenizer_encode(
    tokenizer: Annotated[Optional[Path], TOKENIZER_OPT] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of space-separated ids.")] = False,
) -> None:
    """Text on stdin -> token ids on stdout."""
    tok = _load_tokenizer(tokenizer)
    ids = tok.encode(_read_stdin_text())
    with _stdout_reader_may_leave():
        print(json.dumps(ids) if json_out else " ".join(map(str, ids)), flush=True)


@tokenizer_app.command("decode")
def tokenizer_decode(
    tokenizer: Annotated[Optional[Path], TOKENIZER_OPT] = None,
) -> None:
    """Token ids on stdin (space-separated or a JSON list) -> text on stdout."""
    tok = _load_tokenizer(tokenizer)
    raw = _read_stdin_text().strip()
    try:
        ids = json.loads(raw) if raw.startswith("[") else [int(t) for t in raw.split()]
    except ValueError:
        raise UsageError("stdin must hold integer token ids, space-separated or as a JSON list") from None
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise UsageError("stdin must hold integer token ids")
    bad = [i for i in ids if not 0 <= i < tok.vocab_size]
    if bad:
        raise UsageError(f"token id {bad[0]} is outside the vocabulary (0..{tok.vocab_size - 1})")
    with _stdout_reader_may_leave():
        sys.stdout.write(tok.decode(ids))
        sys.stdout.flush()


def _read_stdin_text() -> str:
    if sys.stdin is None or sys.stdin.closed:
        raise UsageError("stdin is closed: pipe text in")
    if sys.stdin.isatty():
        raise UsageError("stdin is a terminal: pipe text in, e.g. echo hello | gptcli tokenizer encode")
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"stdin is not UTF-8 text (invalid byte at {e.start})") from None


# -- entry point -------------------------------------------------------------------


def main() -> None:
    """Run the app with gptcli's error and exit-code conventions."""
    try:
        rv = app(standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except typer.Exit as e:
        code = e.exit_code
    except (typer.Abort, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        code = 130
    except GptcliError as e:
        if _state["debug"]:
            raise
        print(f"error: {e}", file=sys.stderr)
        code = e.exit_code
    except BrokenPipeError:
        code = 0  # the reader went away (e.g. `| head`): not an error
    except Exception as e:
        if _is_usage_error(e):  # bad flags, caught by the parser (typer's click)
            ctx = getattr(e, "ctx", None)
            if type(e).__name__ == "NoArgsIsHelpError" and ctx is not None:
                print(ctx.get_help(), file=sys.stderr)
            else:
                hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
                print(f"error: {e.format_message()}{hint}", file=sys.stderr)
            code = 2
        elif _state["debug"]:
            raise
        else:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            print(f"error: {type(e).__name__}: {msg} (run with --debug for a traceback)", file=sys.stderr)
            code = 1
    _quiet_exit(code)


def _is_usage_error(e: Exception) -> bool:
    """typer vendors click in new releases and uses click in old ones: match by shape."""
    return callable(getattr(e, "format_message", None)) and isinstance(getattr(e, "exit_code", None), int)


def _quiet_exit(code: int) -> None:
    """Exit without a second BrokenPipeError when stdout's reader has gone."""
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    sys.exit(code)
