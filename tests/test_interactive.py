"""The interactive mode: the session keeps its cache between turns and gives the tokens a
full recompute gives, slides its window when the context fills, stops at a reverse
prompt or an interrupt; and `generate --interactive` on a real pseudo-terminal streams,
stops a reply at Ctrl-C, saves, resets and quits at Ctrl-D or Ctrl-C."""

from __future__ import annotations

import os
import sys

import pytest
import torch

import gptcli
from gptcli.errors import UsageError

from helpers import REPO, assert_clean_error, cli


def _recomputed(model, context: list[int], n: int, block: int) -> list[int]:
    """n greedy tokens after `context`, each from a full forward of the window the
    session keeps (no cache)."""
    ids = list(context)
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([ids[-block:]]))
            ids.append(int(logits[0, -1].argmax()))
    return ids[len(context):]


def test_the_first_turn_is_what_generate_gives(trained_run):
    engine = gptcli.load(trained_run)
    s = engine.session(greedy=True, max_new_tokens=12)
    s.add("First Citizen:\n")
    assert "".join(s.reply()) == engine.generate("First Citizen:\n", greedy=True, max_new_tokens=12)
    assert s.ended_by == "length"


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_turns_on_a_kept_cache_give_the_tokens_of_a_full_recompute(trained_run, dtype):
    engine = gptcli.load(trained_run, dtype=dtype)
    s = engine.session(greedy=True, max_new_tokens=6)
    s.add("ROMEO:\n")
    list(s.reply())
    s.add("\nJULIET:\n")  # several tokens run on top of the cache at once
    before = list(s.context)
    list(s.reply())
    assert len(s.context) < engine.config.block_size  # no slide yet: the cache held everything
    if dtype == "float32":
        assert s.context[len(before):] == _recomputed(engine.model, before, 6, engine.config.block_size)
    assert s.text.startswith("ROMEO:\n") and "\nJULIET:\n" in s.text
    assert engine.tokenizer.decode(s.context[len(before):]) == s.text[-len(engine.tokenizer.decode(
        s.context[len(before):])):]


def test_a_full_context_slides_and_the_text_keeps_everything(trained_run):
    engine = gptcli.load(trained_run)
    block = engine.config.block_size  # 32 for the tiny run
    s = engine.session(greedy=True, max_new_tokens=10)
    for i in range(8):
        s.add(f"Line {i}: to be or not to be\n")
        list(s.reply())
        assert len(s.context) <= block
    assert s.text.count("to be or not to be") == 8  # the text lost nothing, the context did
    with torch.no_grad():  # the next token comes from the window it holds, as a recompute says
        expected = int(engine.model(torch.tensor([s.context]))[0][0, -1].argmax())
    s.sample = s.sample.__class__(**{**s.sample.__dict__, "max_new_tokens": 1})
    list(s.reply())
    assert s.context[-1] == expected


def test_a_reverse_prompt_ends_the_turn_and_stays_in_the_text(trained_run):
    engine = gptcli.load(trained_run)
    free = engine.session(greedy=True, max_new_tokens=30)
    free.add("First Citizen:\n")
    whole = "".join(free.reply())
    marker = whole[10:14]
    assert marker.strip(), whole
    s = engine.session(reverse_prompts=marker, greedy=True, max_new_tokens=30)
    s.add("First Citizen:\n")
    turn = "".join(s.reply())
    assert s.ended_by == "reverse_prompt" and marker in turn and whole.startswith(turn)
    assert len(turn) < len(whole)


def test_an_interrupt_stops_before_the_next_token_and_keeps_what_came(trained_run):
    engine = gptcli.load(trained_run)
    s = engine.session(max_new_tokens=1000, seed=3)
    s.add("ROMEO:\n")
    asked = []
    pieces = list(s.reply(lambda: asked.append(1) or len(asked) > 5))
    assert s.ended_by == "interrupted" and len(s.context) == len(engine.tokenizer.encode("ROMEO:\n")) + 5
    assert s.text == "ROMEO:\n" + "".join(pieces)
    s.reset()
    assert s.text == "" and s.context == []


def test_session_settings_are_checked(trained_run):
    engine = gptcli.load(trained_run)
    with pytest.raises(UsageError, match="not beams"):
        engine.session(num_beams=3)
    with pytest.raises(UsageError, match="use a reverse prompt"):
        engine.session(stop="x")
    with pytest.raises(UsageError, match="must not be empty"):
        engine.session(reverse_prompts=[""])


@pytest.mark.parametrize("args, message", [
    (["-i", "--prompts", "p.txt"], "--interactive reads your lines from stdin"),
    (["-i", "--json"], "it takes no --prompts, --json, --no-stream or --prompt -"),
    (["-r", "X"], "--reverse-prompt applies to --interactive sessions"),
    (["-i", "--beams", "2"], "not beams"),
])
def test_interactive_flag_mistakes_exit_2(trained_run, monkeypatch, capsys, args, message):
    (trained_run.parent / "p.txt").write_text("a\n")
    code, out, err = cli(monkeypatch, capsys, "generate", "-c", str(trained_run), *args, stdin=b"")
    assert_clean_error(code, out, err, 2, message)


def test_save_refuses_what_it_must_not_write_and_the_session_goes_on(trained_run, monkeypatch, capsys):
    (trained_run.parent / "taken.txt").write_text("keep me")
    lines = b"/save taken.txt\n/save /dev/null\n/save run\n/nonsense\n/save\n/save! taken.txt\n"
    code, out, err = cli(monkeypatch, capsys, "generate", "-c", str(trained_run), "-i", "-n", "3", "-p", "A",
                         stdin=lines)
    assert code == 0 and "Traceback" not in err
    assert "taken.txt exists: /save! taken.txt replaces it" in err
    assert "/save /dev/null is a device" in err and "/save run is a folder" in err
    assert "unknown command /nonsense" in err and "/save needs a file name" in err
    assert (trained_run.parent / "taken.txt").read_text() == out  # /save! replaced it with the text


def test_piped_lines_make_the_text_on_stdout(trained_run, monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "generate", "-c", str(trained_run), "-i", "-n", "5", "--greedy",
                         "-p", "ROMEO:", stdin=b"JULIET:\n/save saved.txt\n")
    assert code == 0, err
    saved = (trained_run.parent / "saved.txt").read_text()
    assert out == saved and saved.startswith("ROMEO:") and "\nJULIET:\n" in saved
    assert "saved" in err


# -- on a pseudo-terminal ----------------------------------------------------------


@pytest.fixture
def terminal(trained_run):
    pexpect = pytest.importorskip("pexpect")

    def spawn(*args: str):
        env = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1", "TERM": "dumb"}
        return pexpect.spawn(sys.executable, ["-m", "gptcli", "generate", "-c", str(trained_run), "-i", *args],
                             env=env, cwd=str(trained_run.parent), encoding="utf-8", timeout=60,
                             dimensions=(40, 200))
    return spawn


@pytest.mark.slow
def test_a_session_on_a_terminal(terminal, trained_run):
    child = terminal("-n", "100000", "--seed", "1")
    child.expect_exact("/help lists commands.")
    child.expect_exact("> ")
    child.sendline("ROMEO:")
    child.expect_exact("ROMEO:")  # the terminal's echo
    child.expect(r"\S{3}")  # the reply streams
    child.sendintr()  # the first Ctrl-C stops the reply, not the session
    child.expect_exact("> ")
    child.sendline("/save story.txt")
    child.expect_exact("(saved ")
    story = (trained_run.parent / "story.txt").read_text()
    assert story.startswith("ROMEO:\n") and len(story) > len("ROMEO:\n") + 3 and story.endswith("\n")
    child.sendline("/reset")
    child.expect_exact("(the text is empty again)")
    child.expect_exact("> ")
    child.send("half a line")
    child.expect_exact("half a line")
    child.sendintr()  # Ctrl-C while typing drops the line
    child.expect_exact("> ")
    child.sendintr()  # Ctrl-C at an empty prompt quits
    child.expect(pytest.importorskip("pexpect").EOF)
    child.close()
    assert child.exitstatus == 0


@pytest.mark.slow
def test_ctrl_d_quits_and_a_reverse_prompt_hands_control_back(terminal, trained_run):
    engine = gptcli.load(trained_run)
    reply = engine.generate("First", greedy=True, max_new_tokens=30)
    marker = reply[8:12]
    child = terminal("-n", "30", "--greedy", "-r", marker, "-p", "First")
    child.expect_exact(marker)
    child.sendline("/help")  # after a command the line it goes on is shown again
    child.expect_exact("/reset")
    child.expect_exact(reply[:reply.index(marker) + len(marker)].rsplit("\n", 1)[-1])
    child.sendeof()
    child.expect(pytest.importorskip("pexpect").EOF)
    child.close()
    assert child.exitstatus == 0


def test_a_recurrent_session_carries_its_state_across_turns(small_corpus, monkeypatch, capsys):
    from test_recurrent import FLAGS

    code, _, err = cli(monkeypatch, capsys, "train", str(small_corpus), *FLAGS, "--arch", "lstm", "--max-steps", "3",
                       "--out", "lstm")
    assert code == 0, err
    engine = gptcli.load("lstm")
    s = engine.session(greedy=True, max_new_tokens=5)
    s.add("ROMEO:\n")
    list(s.reply())
    s.add("JULIET:\n")
    before = list(s.context)
    list(s.reply())
    with torch.no_grad():  # the state carried over equals running the whole context again
        expected = _recomputed(engine.model, before, 5, 10**9)
    assert s.context[len(before):] == expected


def test_save_never_writes_over_the_model_being_run(trained_run, monkeypatch, capsys):
    before = {p.name: p.read_bytes() for p in trained_run.iterdir() if p.is_file()}
    lines = f"/save! {trained_run}/model.safetensors\n/save! {trained_run}/config.json\n".encode()
    code, out, err = cli(monkeypatch, capsys, "generate", "-c", str(trained_run), "-i", "-n", "2", stdin=lines)
    assert code == 0 and err.count("is a file this command reads") == 2
    assert {p.name: p.read_bytes() for p in trained_run.iterdir() if p.is_file()} == before


def test_a_pasted_line_longer_than_the_context_is_encoded_by_its_tail(trained_run):
    engine = gptcli.load(trained_run)
    s = engine.session(greedy=True, max_new_tokens=1)
    s.add("a" * 2_000_000)  # one giant word: encoding it whole takes gigabytes
    assert len(s.context) == engine.config.block_size and len(s.text) == 2_000_000
