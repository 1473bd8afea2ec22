"""Corpus reading, the token cache, splits and the batch sampler."""

from __future__ import annotations

import numpy as np
import pytest

from gptcli.corpus import collect_documents
from gptcli.data import BatchSampler, check_fits, split_train_val, spread_windows, token_dtype, tokenize_to_cache
from gptcli.errors import UsageError


def _docs(paths, warnings=None):
    return collect_documents([str(p) for p in paths], (warnings if warnings is not None else []).append)


def test_cache_is_reused_and_rebuilt_on_change(tmp_path, mixed_tokenizer):
    f = tmp_path / "a.txt"
    f.write_text("To be, or not to be. " * 100)
    first, cached = tokenize_to_cache(_docs([f]), mixed_tokenizer)
    assert not cached
    again, cached = tokenize_to_cache(_docs([f]), mixed_tokenizer)
    assert cached and again.key == first.key
    np.testing.assert_array_equal(again.array(), first.array())
    f.write_text("To be, or not to be! " * 100)  # same size, different content
    changed, cached = tokenize_to_cache(_docs([f]), mixed_tokenizer)
    assert not cached and changed.key != first.key
    assert mixed_tokenizer.decode(changed.array()[1:]) == "To be, or not to be! " * 100


def test_cache_key_depends_on_tokenizer(tmp_path, mixed_tokenizer):
    from gptcli.tokenizer import BPETokenizer

    f = tmp_path / "a.txt"
    f.write_text("hello world " * 50)
    other = BPETokenizer.train(["hello world " * 50], 280)
    a, _ = tokenize_to_cache(_docs([f]), mixed_tokenizer)
    b, cached = tokenize_to_cache(_docs([f]), other)
    assert not cached and a.key != b.key


def test_documents_are_separated_by_eot(tmp_path, mixed_tokenizer):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "1.txt").write_text("first doc")
    (tmp_path / "d" / "sub").mkdir()
    (tmp_path / "d" / "sub" / "2.txt").write_text("second 文档")
    tf, _ = tokenize_to_cache(_docs([tmp_path / "d"]), mixed_tokenizer)
    ids = tf.array()
    assert mixed_tokenizer.decode(ids) == "<|endoftext|>first doc<|endoftext|>second 文档"
    assert tf.n_bytes == len("first doc".encode()) + len("second 文档".encode())


def test_folder_skips_binary_and_non_utf8_with_a_warning(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "good.txt").write_text("fine text")
    (d / "blob.bin").write_bytes(b"\x00\x01\x02" * 100)
    (d / "latin1.txt").write_bytes("café".encode("latin-1"))
    (d / ".hidden").write_text("ignored")
    warnings = []
    docs = _docs([d], warnings)
    assert [p.path.name for p in docs] == ["good.txt"]
    assert len(warnings) == 2 and any("binary" in w for w in warnings) and any("UTF-8" in w for w in warnings)


@pytest.mark.parametrize("content, message", [
    (b"\x00\x01binary", "binary"),
    ("café".encode("latin-1"), "not UTF-8"),
    (b"", "empty"),
])
def test_named_bad_files_are_errors(tmp_path, content, message):
    f = tmp_path / "f.txt"
    f.write_bytes(content)
    with pytest.raises(UsageError, match=message):
        _docs([f])


def test_missing_path_and_textless_folder(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        _docs([tmp_path / "nope.txt"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no UTF-8 text, JSON lines or Parquet files"):
        _docs([tmp_path / "empty"])


def test_token_dtype_widens_for_big_vocabularies():
    assert token_dtype(4096) == "uint16"
    assert token_dtype(65536) == "uint16"
    assert token_dtype(65537) == "uint32"


def test_split_takes_validation_from_the_end():
    tokens = np.arange(1000, dtype=np.uint16)
    lengths = np.ones(1000, dtype=np.int64)
    train, val = split_train_val(tokens, lengths, 0.1)
    assert len(val.tokens) == 100 and val.tokens[0] == 900 and train.tokens[-1] == 899
    assert train.n_bytes == 900 and val.n_bytes == 100
    with pytest.raises(UsageError):
        split_train_val(tokens, lengths, 1.5)


def test_too_small_for_one_block_is_an_error():
    tokens = np.arange(10, dtype=np.uint16)
    train, _ = split_train_val(tokens, np.ones(10, dtype=np.int64), 0.5)
    with pytest.raises(UsageError, match="fewer than one block"):
        check_fits(train, 32, "training")


def test_sampler_state_restores_the_same_batches():
    tokens = np.arange(5000, dtype=np.uint16)
    s = BatchSampler(tokens, 16, 4, seed=7)
    s.next()
    saved = s.state_dict()
    expected = [s.next() for _ in range(3)]
    t = BatchSampler(tokens, 16, 4, seed=999)
    t.load_state_dict(saved)
    for batch in expected:
        np.testing.assert_array_equal(t.next(), batch)


def test_sampler_windows_are_contiguous_and_in_range():
    tokens = np.arange(300, dtype=np.uint16)
    batch = BatchSampler(tokens, 16, 64, seed=0).next()
    assert batch.shape == (64, 17) and batch.dtype == np.int64
    assert (np.diff(batch, axis=1) == 1).all() and batch.max() < 300


def test_ranks_draw_different_windows():
    tokens = np.arange(100000, dtype=np.uint16)
    a = BatchSampler(tokens, 16, 8, seed=1, rank=0).next()
    b = BatchSampler(tokens, 16, 8, seed=1, rank=1).next()
    assert not np.array_equal(a, b)


def test_spread_windows_are_fixed_and_span_the_split():
    tokens = np.arange(1000, dtype=np.uint16)
    w = spread_windows(tokens, 16, 10)
    np.testing.assert_array_equal(w, spread_windows(tokens, 16, 10))
    assert w[0, 0] == 0 and w[-1, -1] == 999


@pytest.mark.parametrize("damage", ["same-size", "truncate", "meta", "ids-beyond-vocab"])
def test_a_damaged_cache_entry_is_rebuilt_with_a_warning(tmp_path, mixed_tokenizer, damage):
    import json

    (tmp_path / "a.txt").write_text("some text to cache " * 200)
    docs = collect_documents([str(tmp_path / "a.txt")], print)
    tf, _ = tokenize_to_cache(docs, mixed_tokenizer, cache_dir=tmp_path / "c")
    good = np.array(tf.array())
    if damage == "same-size":
        tf.path.write_bytes(bytes(tf.path.stat().st_size))
    elif damage == "truncate":
        tf.path.write_bytes(tf.path.read_bytes()[:7])
    elif damage == "meta":
        tf.path.with_suffix(".json").write_text("{oops")
    else:  # ids no model could embed, with a digest and meta that agree with them
        import hashlib

        bad = np.full(tf.n_tokens, 65000, dtype=np.uint16)
        tf.path.write_bytes(bad.tobytes())
        meta_path = tf.path.with_suffix(".json")
        meta = json.loads(meta_path.read_text())
        meta.update(blake2b=hashlib.blake2b(bad.tobytes(), digest_size=20).hexdigest(), max_id=65000)
        meta_path.write_text(json.dumps(meta))
    warnings = []
    again, cached = tokenize_to_cache(docs, mixed_tokenizer, cache_dir=tmp_path / "c", warn=warnings.append)
    assert not cached and warnings and "damaged" in warnings[0]
    np.testing.assert_array_equal(again.array(), good)
