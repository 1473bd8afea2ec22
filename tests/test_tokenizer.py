"""The byte-level BPE tokenizer: exact round trips, chunked encoding, byte counts, errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptcli.corpus_formats import Format, pieces
from gptcli.errors import UsageError
from gptcli.tokenizer import EOT, BPETokenizer


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_unicode_round_trips_exactly(mixed_tokenizer, text):
    assert mixed_tokenizer.decode(mixed_tokenizer.encode(text)) == text


@pytest.mark.parametrize("text", [
    "日本語のテキスト", "中文文本。", "emoji 🙂🚀 and ZWJ 👩‍💻", "tabs\tinside\t", "CRLF\r\nlines\r\n",
    "   leading spaces", "trailing spaces   ", "\n\n\nnewlines", "", " ", "a", "\x00\x01 control", "İstanbul ß ﬁ",
])
def test_hard_cases_round_trip(mixed_tokenizer, text):
    assert mixed_tokenizer.decode(mixed_tokenizer.encode(text)) == text


def test_unseen_characters_still_round_trip(mixed_tokenizer):
    # Characters never seen in training fall back to their bytes: the 256-byte alphabet.
    text = "Ꭰ𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∮ 🦜"
    assert mixed_tokenizer.decode(mixed_tokenizer.encode(text)) == text


def test_eot_is_a_single_special_token(mixed_tokenizer):
    ids = mixed_tokenizer.encode(f"a{EOT}b")
    assert mixed_tokenizer.eot_id in ids
    assert ids.count(mixed_tokenizer.eot_id) == 1


def test_token_byte_lengths_sum_to_utf8_length(mixed_tokenizer):
    text = "Hello, 世界! 🙂\r\n\tnaïve"
    lengths = mixed_tokenizer.token_byte_lengths()
    ids = mixed_tokenizer.encode(text)
    assert int(lengths[ids].sum()) == len(text.encode("utf-8"))
    assert lengths[mixed_tokenizer.eot_id] == 0


def test_chunked_encoding_equals_whole_encoding(tmp_path, mixed_tokenizer, shakespeare_text):
    text = shakespeare_text[:120000] + " 日本語  \r\n\t 🙂  x  " * 200
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    found = list(pieces(path, Format(), "t.txt", chunk_chars=997))
    assert [starts for starts, _ in found] == [True] + [False] * (len(found) - 1)  # one document
    chunks = [text for _, text in found]
    assert len(chunks) > 50
    assert "".join(chunks) == text
    chunked = [i for ids in mixed_tokenizer.encode_batch(chunks) for i in ids]
    assert chunked == mixed_tokenizer.encode(text)


def test_vocab_below_257_is_refused():
    with pytest.raises(UsageError, match="at least 257"):
        BPETokenizer.train(["some text"], 256)


def test_save_load_round_trip(tmp_path, mixed_tokenizer):
    path = mixed_tokenizer.save(tmp_path / "tok")
    loaded = BPETokenizer.load(path.parent)
    assert loaded.sha256 == mixed_tokenizer.sha256
    assert loaded.encode("To be, or not 🙂") == mixed_tokenizer.encode("To be, or not 🙂")


@pytest.mark.parametrize("content", ["not json", "{}", '{"model": {"type": "WordPiece"}}'])
def test_load_rejects_non_tokenizers(tmp_path, content):
    path = tmp_path / "tokenizer.json"
    path.write_text(content)
    with pytest.raises(UsageError):
        BPETokenizer.load(path)


@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("ab cd\n\t 日本🙂é.,")), max_size=3000), n=st.integers(1, 40))
def test_encode_tail_equals_the_end_of_the_whole_encoding(mixed_tokenizer, text, n):
    assert mixed_tokenizer.encode_tail(text, n) == mixed_tokenizer.encode(text)[-n:]


def test_encode_tail_of_a_long_text_reads_only_its_end(mixed_tokenizer, shakespeare_text):
    text = shakespeare_text * 3
    assert mixed_tokenizer.encode_tail(text, 64) == mixed_tokenizer.encode(text)[-64:]
