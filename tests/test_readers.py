"""Strict readers and memory budgets: what hostile files and settings are refused as."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gptcli import budget
from gptcli.architectures import param_count
from gptcli.config import ModelConfig
from gptcli.errors import UsageError
from gptcli.model import GPT
from gptcli.store.readers import expect, read_header, read_json, read_jsonl
from gptcli.store.weights import save_tensors


def test_read_header_agrees_with_safetensors_on_a_real_file(tmp_path):
    save_tensors({"a": torch.zeros(2, 3), "b": torch.ones(5, dtype=torch.bfloat16)}, tmp_path / "w.safetensors")
    header = read_header(tmp_path / "w.safetensors")
    assert {k: (v.dtype, v.shape) for k, v in header.items()} == {"a": ("F32", (2, 3)), "b": ("BF16", (5,))}


@pytest.mark.parametrize("data, message", [
    (struct.pack("<Q", 2**62) + b"{}", "claims"),
    (struct.pack("<Q", 2) + b"[]", "not an object"),
    (struct.pack("<Q", 60) + json.dumps({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()[:60],
     "not a valid"),
    (b"\x01", "claims"),
])
def test_read_header_refuses_what_the_file_cannot_hold(tmp_path, data, message):
    (tmp_path / "w").write_bytes(data)
    with pytest.raises(UsageError, match=message):
        read_header(tmp_path / "w")


def test_read_json_bounds_size_and_nesting(tmp_path):
    (tmp_path / "deep.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(UsageError, match="nested too deeply"):
        read_json(tmp_path / "deep.json")
    (tmp_path / "big.json").write_text("[" + "1," * 100 + "1]")
    with pytest.raises(UsageError, match="too large"):
        read_json(tmp_path / "big.json", max_bytes=50)


def test_read_jsonl_drops_only_a_cut_last_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    path.write_text('{"a": 1}\nnot json\n{"a": 3}\n')
    with pytest.raises(UsageError, match="line 2"):
        read_jsonl(path)


def test_jsonl_is_streamed_with_a_bound_on_each_line(tmp_path):
    from gptcli.store.readers import iter_jsonl

    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\n' + '{"b": "' + "x" * 200 + '"}\n{"a": 3}\n')
    assert [n for n, _ in iter_jsonl(path, max_line=300)] == [1, 2, 3]
    with pytest.raises(UsageError, match="line 2 is longer than 100 bytes"):
        list(iter_jsonl(path, max_line=100))
    path.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
    with pytest.raises(UsageError, match="line 2 is not a JSON object"):
        list(iter_jsonl(path))


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 100, 1001])
def test_a_thinned_stream_keeps_evenly_spaced_rows_under_its_cap_and_the_last(n):
    from gptcli.plots import Thinned

    thin = Thinned(cap=8)
    for i in range(n):
        thin.add((i,))
    rows = [r[0] for r in thin.rows()]
    assert len(rows) <= 9 and (rows[-1] == n - 1 if n else rows == [])
    body = rows if not n or (n - 1) % thin.stride == 0 else rows[:-1]
    assert body == list(range(0, n, thin.stride))  # every stride-th row, from the first


def test_expect_is_exact_about_types():
    expect({"n": 3, "x": 1.5, "o": None}, {"n": int, "x": float, "o?": (int, None), "m?": str}, "doc")
    bad = ((2.0, int), (True, int), (float("nan"), float), ("1", int), ([1, "a"], [int]), ({}, {"k": int}))
    for value, schema in bad:
        with pytest.raises(UsageError):
            expect(value, schema, "doc")


@settings(max_examples=30, deadline=None)
@given(layers=st.integers(1, 3), heads=st.integers(1, 4), per_head=st.integers(1, 8), block=st.integers(1, 64),
       bias=st.booleans(), pos=st.sampled_from(["learned", "sinusoidal"]))
def test_param_count_from_the_config_equals_the_model(layers, heads, per_head, block, bias, pos):
    n_embd = heads * per_head * (2 if pos == "sinusoidal" else 1)
    cfg = ModelConfig(vocab_size=300, n_layer=layers, n_head=heads, n_embd=n_embd, block_size=block, bias=bias,
                      pos_encoding=pos)
    assert param_count(cfg) == GPT(cfg).num_params()


def test_a_model_larger_than_the_machine_is_refused_with_the_number(monkeypatch):
    monkeypatch.setattr(budget, "machine_bytes", lambda: 1 << 30)
    budget.check_model(ModelConfig())  # 4.3M parameters: 17 MB
    with pytest.raises(UsageError, match=r"would need about .* GiB of memory, and this machine allows 1.0 GiB"):
        budget.check_model(ModelConfig(n_layer=64, n_embd=4096, n_head=32))


def test_json_for_stdout_is_always_valid_utf8_json():
    """NaN and infinities become null; a path's undecodable bytes (lone surrogates, as
    Python holds them) are written as \\xNN; everything else is as json.dumps writes it."""
    import json

    from gptcli.store.readers import dumps

    text = dumps({"loss": float("nan"), "best": [float("inf"), -float("inf"), 2.5], "path": "run-\udcff",
                  "tokens": "日本語", 3: True})
    assert json.loads(text) == {"loss": None, "best": [None, None, 2.5], "path": "run-\\xff", "tokens": "日本語",
                                "3": True}
    text.encode("utf-8")  # no surrogate left to fail
