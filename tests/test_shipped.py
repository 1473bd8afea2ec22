"""The model and tokenizer shipped with gptcli: present, small, self-consistent, the
default when no run is around, and deterministic under greedy decoding."""

from __future__ import annotations

import json

from gptcli.store import checkpoint as ckpt
from gptcli.workspace import SHIPPED

from helpers import REPO, cli


def test_shipped_folder_loads_and_is_self_consistent():
    model, tok, doc = ckpt.load_run(SHIPPED)  # checks tensors against config, tokenizer against model
    assert doc["tokenizer"]["sha256"] == tok.sha256
    repo_tokenizer = REPO / "tokenizer" / "tokenizer.json"
    assert repo_tokenizer.read_text(encoding="utf-8") == tok.json_text  # the workspace default is the same one
    size = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert size < 25 * 2**20
    assert doc["training"]["best_val_bpb"] <= 2.2


def test_generate_and_eval_default_to_the_shipped_model(monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "generate", "-p", "ROMEO:", "-n", "30", "--greedy")
    assert code == 0 and "shipped with gptcli" in err and len(out) > 20
    code, again, _ = cli(monkeypatch, capsys, "generate", "-p", "ROMEO:", "-n", "30", "--greedy")
    assert again == out  # greedy is deterministic
    code, record, _ = cli(monkeypatch, capsys, "generate", "-p", "ROMEO:", "-n", "30", "--greedy", "--json")
    assert json.loads(record)["text"] == out


def test_eval_defaults_to_the_shipped_model(monkeypatch, capsys, isolated):
    (isolated / "line.txt").write_text("ROMEO:\nBut soft, what light through yonder window breaks?\n")
    code, out, err = cli(monkeypatch, capsys, "eval", "line.txt", "--json")
    assert code == 0 and "shipped with gptcli" in err
    assert json.loads(out)["bits_per_byte"] < 4.0
