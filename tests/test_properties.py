"""Property tests: streaming decode over any token sequence, and save/load identity for
random model configs."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gptcli.config import ModelConfig
from gptcli.model import GPT
from gptcli.store import checkpoint as ckpt
from gptcli.store.weights import save_weights


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_streamed_pieces_concatenate_to_the_whole_and_never_split_a_character(mixed_tokenizer, data):
    ids = data.draw(st.lists(st.integers(0, mixed_tokenizer.vocab_size - 1), max_size=60))
    dec = mixed_tokenizer.stream_decoder()
    pieces = [dec.step(i) for i in ids] + [dec.flush()]
    whole = b"".join(mixed_tokenizer.token_bytes[i] for i in ids)
    assert "".join(pieces) == whole.decode("utf-8", errors="replace")
    for piece in pieces:
        piece.encode("utf-8")  # no lone surrogates: every piece is whole characters
    # for valid UTF-8 it is exactly the tokenizer's own decode
    try:
        whole.decode("utf-8")
        assert "".join(pieces) == mixed_tokenizer.decode(ids)
    except UnicodeDecodeError:
        pass


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=80))
def test_streaming_valid_text_matches_decode(mixed_tokenizer, text):
    ids = mixed_tokenizer.encode(text)
    dec = mixed_tokenizer.stream_decoder()
    pieces = [dec.step(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == text
    assert "\ufffd" not in "".join(pieces) or "\ufffd" in text


configs = st.builds(
    lambda heads, per_head, layers, block, bias, pos, eps: ModelConfig(
        vocab_size=300, n_head=heads, n_embd=heads * per_head, n_layer=layers, block_size=block, bias=bias,
        pos_encoding=pos, layer_norm_eps=eps),
    heads=st.integers(1, 4), per_head=st.sampled_from([2, 4, 6, 8]), layers=st.integers(1, 3),
    block=st.integers(1, 48), bias=st.booleans(), pos=st.sampled_from(["learned", "sinusoidal"]),
    eps=st.sampled_from([1e-5, 1e-6]),
)


@settings(max_examples=40, deadline=None)
@given(cfg=configs, seed=st.integers(0, 2**16))
def test_save_load_is_identity_for_random_configs(tmp_path_factory, mixed_tokenizer, cfg, seed):
    tok = mixed_tokenizer
    cfg.vocab_size = tok.vocab_size
    torch.manual_seed(seed)
    model = GPT(cfg.validate())
    run = tmp_path_factory.mktemp("run")
    ckpt.write_tokenizer(run, tok)
    ckpt.write_config(run, cfg, tok, {})
    save_weights(run / ckpt.WEIGHTS, model)
    loaded, _, doc = ckpt.load_run(run)
    assert doc["model"] == cfg.__dict__
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
