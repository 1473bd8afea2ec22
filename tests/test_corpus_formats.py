"""Corpus formats: JSON lines and Parquet records, and gzip/zstd/xz archives, read as the
documents they hold, and every broken form refused with one line naming the file and
where in it."""

from __future__ import annotations

import gzip
import json
import lzma
import sys

import numpy as np
import pytest

from gptcli import corpus_formats
from gptcli.corpus import collect_documents, document_pieces, iter_documents_text
from gptcli.data import tokenize_to_cache
from gptcli.errors import UsageError

from helpers import TINY_FLAGS, assert_clean_error, cli

zstandard = pytest.importorskip("zstandard")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

RECORDS = ["To be, or not to be: that is the question.", "", "日本語 and emoji 🙂\n\n  spaced  ",
           "Whether 'tis nobler in the mind to suffer\nThe slings and arrows"]
COMPRESS = {"": lambda b: b, ".gz": gzip.compress, ".xz": lzma.compress,
            ".zst": lambda b: zstandard.ZstdCompressor().compress(b)}


def _docs(paths, text_field=None, warnings=None):
    return collect_documents([str(p) for p in paths], (warnings if warnings is not None else []).append, text_field)


def _jsonl(records, field="body") -> bytes:
    return "".join(json.dumps({field: r, "id": i}) + "\n" for i, r in enumerate(records)).encode()


def _expected(tok, texts) -> list[int]:
    """<|endoftext|> before every document, then its ids: a plain file's layout, per record."""
    return [i for t in texts for i in [tok.eot_id, *tok.encode(t)]]


@pytest.mark.parametrize("suffix", list(COMPRESS))
def test_each_json_record_is_a_document_in_every_archive(tmp_path, mixed_tokenizer, suffix):
    path = tmp_path / f"d.jsonl{suffix}"
    path.write_bytes(COMPRESS[suffix](_jsonl(RECORDS)))
    docs = _docs([path], "body")
    assert docs[0].fmt.kind == "jsonl" and docs[0].size == sum(len(r.encode()) for r in RECORDS)
    tf, _ = tokenize_to_cache(docs, mixed_tokenizer)
    assert tf.array().tolist() == _expected(mixed_tokenizer, RECORDS)
    assert tf.n_bytes == sum(len(r.encode()) for r in RECORDS)  # the text's bytes, not the JSON's


def test_parquet_rows_are_documents_read_by_row_group(tmp_path, mixed_tokenizer):
    rows = RECORDS * 30
    pq.write_table(pa.table({"text": rows, "n": list(range(len(rows)))}), tmp_path / "s.parquet", row_group_size=7)
    assert pq.ParquetFile(tmp_path / "s.parquet").num_row_groups > 10
    tf, _ = tokenize_to_cache(_docs([tmp_path / "s.parquet"]), mixed_tokenizer)
    assert tf.array().tolist() == _expected(mixed_tokenizer, rows)


def test_compressed_parquet_and_a_folder_of_mixed_formats(tmp_path, mixed_tokenizer):
    folder = tmp_path / "shards"
    folder.mkdir()
    pq.write_table(pa.table({"text": RECORDS[:2]}), tmp_path / "a.parquet")
    (folder / "a.parquet.gz").write_bytes(gzip.compress((tmp_path / "a.parquet").read_bytes()))
    (folder / "b.jsonl.xz").write_bytes(lzma.compress(_jsonl(RECORDS[2:], "text")))
    (folder / "c.txt.zst").write_bytes(COMPRESS[".zst"]("plain text".encode()))
    (folder / "d.bin").write_bytes(b"\x00\x01binary")
    warnings = []
    docs = _docs([folder], warnings=warnings)
    assert [d.fmt.kind for d in docs] == ["parquet", "jsonl", "text"]
    assert any("d.bin" in w and "binary" in w for w in warnings)
    tf, _ = tokenize_to_cache(docs, mixed_tokenizer)
    assert tf.array().tolist() == _expected(mixed_tokenizer, [*RECORDS, "plain text"])


def test_a_compressed_text_file_is_the_same_document_as_the_plain_one(tmp_path, mixed_tokenizer):
    text = "Now is the winter of our discontent\n" * 500
    (tmp_path / "t.txt").write_text(text)
    (tmp_path / "t.txt.gz").write_bytes(gzip.compress(text.encode()))
    plain, packed = _docs([tmp_path / "t.txt"])[0], _docs([tmp_path / "t.txt.gz"])[0]
    assert packed.digest == plain.digest and packed.n_bytes == plain.n_bytes  # so the token cache is shared
    tokenize_to_cache([plain], mixed_tokenizer)
    _, cached = tokenize_to_cache([packed], mixed_tokenizer)
    assert cached


def test_the_field_and_format_are_part_of_the_cache_key(tmp_path, mixed_tokenizer):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"a": f"first {i}", "b": f"second {i}"}) + "\n" for i in range(50)))
    a, b = _docs([path], "a")[0], _docs([path], "b")[0]
    assert a.digest != b.digest
    ta, _ = tokenize_to_cache([a], mixed_tokenizer)
    tb, cached = tokenize_to_cache([b], mixed_tokenizer)
    assert not cached and ta.key != tb.key
    assert "second 3" in mixed_tokenizer.decode(tb.array())


def test_a_long_record_is_cut_where_its_tokens_do_not_change(tmp_path, mixed_tokenizer):
    text = ("Once more unto the breach, dear friends, once more; 日本語  \n\t " * 3000)
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": text}) + "\n")
    doc = _docs([path])[0]
    found = list(document_pieces(doc, chunk_chars=997))
    assert len(found) > 50 and [s for s, _ in found] == [True] + [False] * (len(found) - 1)
    assert "".join(t for _, t in found) == text
    tf, _ = tokenize_to_cache([doc], mixed_tokenizer)
    assert tf.array().tolist() == [mixed_tokenizer.eot_id, *mixed_tokenizer.encode(text)]
    assert "".join(iter_documents_text([doc])) == text


@pytest.mark.parametrize("name, content, message", [
    ("d.jsonl", b'{"text": "a"}\n{"body": "b"}\n', "d.jsonl line 2 has no 'text' field (it has: body)"),
    ("d.jsonl", b'{"text": "a"}\n{"text": 3}\n', "d.jsonl line 2: the 'text' field is a number, not a string"),
    ("d.jsonl", b'{"text": null}\n', "d.jsonl line 1: the 'text' field is null, not a string"),
    ("d.jsonl", b'{"text": "a"}\n["text"]\n', "d.jsonl line 2 is not a JSON object but an array"),
    ("d.jsonl", b'{"text": "a"}\n\n{"text": "b"\n', "d.jsonl line 3 is not valid JSON"),
    ("d.jsonl", b'{"text": "caf\xe9"}\n', "d.jsonl line 1 is not UTF-8"),
    ("d.jsonl", b'{"text": "a\\ud800b"}\n', "d.jsonl line 1: the text holds a lone surrogate (U+D800)"),
    ("d.json", b'[{"text": "a"}, {"text": "b"}]\n', "d.json is a JSON array, not JSON lines"),
    ("d.jsonl", b'{"text": "a", "x": ' + b"[" * 100000 + b"]" * 100000 + b"}\n", "d.jsonl line 1 nests too deeply"),
    ("d.jsonl.gz", gzip.compress(b'{"text": "a"}\n' * 1000)[:-30], "d.jsonl.gz is not a readable gzip file"),
    ("d.jsonl.gz", b"\x1f\x8bnot really gzip", "d.jsonl.gz is not a readable gzip file"),
    ("d.jsonl.xz", lzma.compress(b'{"text": "a"}\n' * 1000)[:-30], "d.jsonl.xz is not a readable xz file"),
    ("d.txt.zst", zstandard.ZstdCompressor().compress(b"plain " * 5000)[:-9], "ended inside a frame"),
    ("d.txt.gz", gzip.compress(b"caf\xe9 au lait"), "d.txt.gz is not UTF-8 text"),
    ("d.parquet", b"PAR1 but nothing else", "d.parquet is not a readable Parquet file"),
])
def test_broken_records_and_archives_are_one_clear_error(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UsageError) as e:
        _docs([tmp_path / name])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_parquet_schema_and_null_errors_name_the_row_group(tmp_path):
    pq.write_table(pa.table({"body": ["a", "b"]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "b.parquet")
    pq.write_table(pa.table({"text": ["a", "b", None, "d"]}), tmp_path / "c.parquet", row_group_size=2)
    with pytest.raises(UsageError, match=r"a.parquet has no 'text' column \(it has: body\)"):
        _docs([tmp_path / "a.parquet"])
    with pytest.raises(UsageError, match="b.parquet: the 'text' column holds int64, not strings"):
        _docs([tmp_path / "b.parquet"])
    with pytest.raises(UsageError, match="c.parquet row group 1, row 0: the 'text' value is null"):
        _docs([tmp_path / "c.parquet"])


def test_a_line_longer_than_the_cap_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_formats, "MAX_LINE_BYTES", 1000)
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": "x" * 5000}) + "\n")
    with pytest.raises(UsageError, match="d.jsonl line 1 is longer than"):
        _docs([tmp_path / "d.jsonl"])


def test_missing_packages_name_the_extra(tmp_path, monkeypatch):
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "a.parquet")
    (tmp_path / "b.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(b"hello"))
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(UsageError, match=r"reading Parquet needs pyarrow: pip install 'gptcli\[data\]'"):
        _docs([tmp_path / "a.parquet"])
    with pytest.raises(UsageError, match=r"reading zstd needs the zstandard package"):
        _docs([tmp_path / "b.txt.zst"])


def test_formats_come_from_the_name_else_the_content():
    detect = corpus_formats.detect
    assert detect("a.JSONL.GZ", b"", None) == corpus_formats.Format("jsonl", "gzip", "text")
    assert detect("a.ndjson", b"", "body") == corpus_formats.Format("jsonl", None, "body")
    assert detect("shard", b"PAR1....", None).kind == "parquet"
    assert detect("dump", b"\x28\xb5\x2f\xfd...", None) == corpus_formats.Format("text", "zstd")
    assert detect(None, b'{"text": "a"}', None).kind == "text"  # stdin: records only when --text-field says so
    assert detect(None, b"\xfd7zXZ\x00...", "body") == corpus_formats.Format("jsonl", "xz", "body")


# -- the commands ------------------------------------------------------------------


def test_train_and_eval_read_a_compressed_jsonl_with_a_text_field(tmp_path, monkeypatch, capsys, shakespeare_text):
    monkeypatch.chdir(tmp_path)
    paragraphs = [p for p in shakespeare_text[:60000].split("\n\n") if p.strip()]
    (tmp_path / "data.jsonl.gz").write_bytes(gzip.compress(_jsonl(paragraphs)))
    code, out, err = cli(monkeypatch, capsys, "train", "data.jsonl.gz", "--text-field", "body", *TINY_FLAGS,
                         "--max-steps", "2", "-o", "run", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["text_field"] == "body" and summary["corpus"] == ["data.jsonl.gz"]
    code, out, err = cli(monkeypatch, capsys, "eval", "data.jsonl.gz", "--text-field", "body", "-c", "run",
                         "--json")
    assert code == 0, err and json.loads(out)["bits_per_byte"] > 0
    # --resume reads the recorded corpus with the recorded field
    code, out, err = cli(monkeypatch, capsys, "train", "--resume", "run", "--max-steps", "3")
    assert code == 0, err


def test_stdin_is_json_lines_when_a_text_field_is_given(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = gzip.compress(_jsonl(["hello world, " * 40, "good night, " * 40], "body"))
    code, out, err = cli(monkeypatch, capsys, "tokenizer", "train", "-", "--text-field", "body", "--vocab-size",
                         "280", "-o", "tok", stdin=data)
    assert code == 0, err
    vocab = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())["model"]["vocab"]
    assert any("world" in t for t in vocab) and not any("body" in t for t in vocab)


@pytest.mark.parametrize("args, message", [
    (["train", "t.txt", "--text-field", "body"], "--text-field body names a field of JSON lines or Parquet records"),
    (["train", "d.jsonl"], "d.jsonl line 1 has no 'text' field (it has: body, id)"),
    (["eval", "d.jsonl", "--text-field", "id"], "d.jsonl line 1: the 'id' field is a number, not a string"),
])
def test_field_mistakes_exit_2_with_one_line_and_cache_nothing(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.txt").write_text("plain text " * 100)
    (tmp_path / "d.jsonl").write_bytes(_jsonl(["some text " * 50]))
    code, out, err = cli(monkeypatch, capsys, *args, *TINY_FLAGS if args[0] == "train" else ())
    assert_clean_error(code, out, err, 2, message)
    tokens = tmp_path / "cache" / "tokens"
    assert not tokens.exists() or not any(tokens.glob("*.bin"))
    assert not (tmp_path / "checkpoints").exists()


def test_records_tokenize_to_a_bounded_batch(tmp_path, mixed_tokenizer, monkeypatch):
    """Many tiny records are encoded a bounded batch at a time, not all at once."""
    import gptcli.data as data

    monkeypatch.setattr(data, "ENCODE_BATCH_PIECES", 100)
    sizes = []
    real = mixed_tokenizer.encode_batch
    monkeypatch.setattr(mixed_tokenizer, "encode_batch", lambda texts: sizes.append(len(texts)) or real(texts))
    path = tmp_path / "d.jsonl"
    path.write_bytes(_jsonl([f"record {i}" for i in range(1050)], "text"))
    tf, _ = tokenize_to_cache(_docs([path]), mixed_tokenizer)
    assert max(sizes) == 100 and sum(sizes) == 1050
    assert np.count_nonzero(tf.array() == mixed_tokenizer.eot_id) == 1050


def test_train_reads_a_folder_of_parquet_shards(tmp_path, monkeypatch, capsys, shakespeare_text):
    monkeypatch.chdir(tmp_path)
    paragraphs = [p for p in shakespeare_text[:60000].split("\n\n") if p.strip()]
    (tmp_path / "shards").mkdir()
    for i in range(3):
        pq.write_table(pa.table({"text": paragraphs[i::3]}), tmp_path / "shards" / f"{i:05d}.parquet",
                       row_group_size=50)
    code, out, err = cli(monkeypatch, capsys, "train", "shards", *TINY_FLAGS, "--max-steps", "2", "-o", "run", "--json")
    assert code == 0, err
    assert json.loads(out)["corpus"] == [f"shards/{i:05d}.parquet" for i in range(3)]


def test_compare_refuses_a_bad_corpus_before_making_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.jsonl").write_bytes(_jsonl(["some text " * 50]))
    code, out, err = cli(monkeypatch, capsys, "compare", "d.jsonl", "--arch", "gpt", "--max-steps", "2", "-o", "cmp")
    assert_clean_error(code, out, err, 2, "d.jsonl line 1 has no 'text' field")
    assert not (tmp_path / "cmp").exists()
