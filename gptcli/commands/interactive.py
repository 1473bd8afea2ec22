"""`gptcli generate --interactive`: a person types lines, and the model continues the text.

The terminal's side of a generation.session.Session: read a line (with line editing when
stdin is a terminal), add it to the running text, stream the reply. A first Ctrl-C stops
the reply: a signal handler sets a flag the session reads before each token, so no
computation is cut in half. Ctrl-D, or Ctrl-C at an empty prompt, ends the session
(exit 0). /reset, /save FILE and /help are commands.

stdout carries the running text: the model's words, and the typed lines unless the
terminal showing stdout has echoed them already. The "> " prompt and notes go to the
terminal (or stderr). A line the user types starts on a line of its own, except after a
reverse prompt, which invites the text that follows it on its line.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from gptcli.commands.generate import GenerateRequest, Sink
from gptcli.console import Console, say
from gptcli.errors import UsageError
from gptcli.generation.engine import Generator
from gptcli.generation.session import Session
from gptcli.store import atomic, folders

MARK = "> "
HELP = """commands:
  /reset         start again from an empty text
  /save FILE     write the text so far to FILE (all of it, also what slid out of the context)
  /save! FILE    the same, replacing FILE
  /help          this list
  //...          a line that starts with / itself
Each line you type joins the text, and the model continues it. Ctrl-C stops a reply;
Ctrl-D, or Ctrl-C at an empty prompt, quits."""


class _Terminal:
    """Where the text goes (out) and where lines come from (stdin)."""

    def __init__(self, out: Sink):
        self.out = out
        self.tty = sys.stdin is not None and sys.stdin.isatty()
        self.echoed = self.tty and out.isatty()  # the terminal shows typed lines where stdout shows the text
        self.readline = None
        if self.echoed:
            try:
                import readline  # line editing and history for input()

                self.readline = readline
            except ImportError:
                pass

    def show(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def read(self, mark: str) -> str:
        """A line, without its newline. EOFError at the end of input (Ctrl-D)."""
        if self.echoed:
            return input(mark)
        if self.tty and mark:
            sys.stderr.write(mark)
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line[:-1] if line.endswith("\n") else line

    def typed(self) -> bool:
        """Whether the line being edited held text when Ctrl-C came."""
        return bool(self.readline and self.readline.get_line_buffer())


def run(engine: Generator, req: GenerateRequest, out: Sink, console: Console) -> None:
    session = Session(engine, req.sample, req.reverse_prompts)
    term = _Terminal(out)
    limit = "no context limit" if engine.config.arch != "gpt" else f"a {engine.config.block_size}-token context"
    console.info(f"interactive: {engine.run_dir} ({limit}). Type text and press Enter; the model continues it. "
                 "Ctrl-C stops a reply, Ctrl-D quits, /help lists commands.")
    try:
        _converse(session, term, req.prompts[0], console)
    except (EOFError, KeyboardInterrupt):  # Ctrl-D, or Ctrl-C anywhere but in a reply or a typed line: quit
        if term.echoed:
            term.show("\n")


def _converse(session: Session, term: _Terminal, first: str, console: Console) -> None:
    ended, commanded = None, False
    if first:
        session.add(first)
        term.show(first)
        ended = _reply(session, term)
    while True:
        if ended not in ("reverse_prompt", None) and session.text and not session.text.endswith("\n"):
            session.add("\n")  # the next line starts on a line of its own, in the text as on the screen
            term.show("\n")
        mark = MARK
        if ended == "reverse_prompt":  # the line goes on after it: after a command, show where
            mark = session.text.rsplit("\n", 1)[-1] if commanded else ""
        commanded = False
        try:
            line = term.read(mark)
        except KeyboardInterrupt:
            if not term.typed():
                raise
            say("")  # Ctrl-C drops the line being typed, as a shell does
            continue
        if line.startswith("/") and not line.startswith("//"):
            if _command(line, session, console) == "reset":
                ended = None
            commanded = True
            continue
        text = (line[1:] if line.startswith("//") else line) + "\n"
        try:
            session.add(text)
        except UsageError as e:
            say(f"error: {e}")
            continue
        if not term.echoed:
            term.show(text)
        ended = _reply(session, term)


def _reply(session: Session, term: _Terminal) -> str | None:
    """Stream the model's continuation; a Ctrl-C meanwhile stops it (not the session)."""
    hit = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: hit.append(signum))
    try:
        for piece in session.reply(lambda: bool(hit)):
            term.show(piece)
    finally:
        signal.signal(signal.SIGINT, previous)
    return session.ended_by


def _command(line: str, session: Session, console: Console) -> str | None:
    name, _, arg = line.partition(" ")
    arg = arg.strip()
    if name == "/help":
        say(HELP)
    elif name == "/reset":
        session.reset()
        console.info("(the text is empty again)")
        return "reset"
    elif name in ("/save", "/save!"):
        _save(session, arg, replace=name == "/save!")
    else:
        say(f"error: unknown command {name}: /help lists them; //{line[1:]} sends the line as text")
    return None


def _save(session: Session, arg: str, replace: bool) -> None:
    if not arg:
        say("error: /save needs a file name: /save story.txt")
        return
    path = Path(arg)
    try:
        # a folder, device, FIFO or link, or a file of the model being run: refused
        folders.check_file_out(path, "/save", overwrite=True, reads=[session.engine.run_dir])
        if path.exists() and not replace:
            raise UsageError(f"{path} exists: /save! {arg} replaces it")
        atomic.write_text(path, session.text)
    except UsageError as e:
        say(f"error: {e}")
        return
    except OSError as e:
        say(f"error: cannot write {path}: {e.strerror or e}")
        return
    say(f"(saved {len(session.text):,} characters to {path})")
