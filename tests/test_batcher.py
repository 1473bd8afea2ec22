"""Continuous batching (generation/batcher.py): rows that join and leave one batch
between steps decode as the engine decodes them alone, and the cache operations under
it (KVCache.keep/join) keep every row's logits equal to a full recompute."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from gptcli.generation.batcher import Batcher, Done, QueueFull, Row, Token

from helpers import REPO

RUN = REPO / "gptcli" / "assets" / "default"


@pytest.fixture(scope="module")
def engine():
    from gptcli.generation.engine import Generator

    return Generator(RUN)


class Collect:
    def __init__(self):
        self.tokens, self.done, self.event = [], None, threading.Event()

    def __call__(self, event):
        if isinstance(event, Token):
            self.tokens.append(event)
        else:
            self.done = event
            self.event.set()


def row(engine, prompt: str, **settings) -> tuple[Row, Collect]:
    sample = engine.sample_config(settings)
    gen = engine.output_generator(sample, prompt, 0) if sample.strategy == "sample" else None
    listen = Collect()
    return Row(engine.encode([prompt])[0], sample, engine.new_output(0, prompt, 0, sample), listen, gen), listen


def test_rows_joining_at_staggered_times_decode_as_they_would_alone(engine):
    batcher = Batcher(engine, parallel=4)
    batcher.start()
    cases = [("ROMEO:", dict(max_new_tokens=8 + 3 * i, greedy=True)) if i % 2 else
             ("JULIET:\n" * (i % 3 + 1), dict(max_new_tokens=10 + 2 * i, seed=i, top_p=1.0)) for i in range(10)]
    cases[3][1]["repetition_penalty"] = 1.3
    cases[4][1]["stop"] = "\n"
    listeners = []
    for prompt, settings in cases:  # more rows than places: some wait, and join as others leave
        r, listen = row(engine, prompt, **settings)
        batcher.submit([r])
        listeners.append(listen)
        time.sleep(0.005)
    for listen in listeners:
        assert listen.event.wait(60)
    batcher.stop()
    for (prompt, settings), listen in zip(cases, listeners):
        want = engine.complete(prompt, **settings)[0]
        got = listen.done.output
        assert (got.token_ids, got.text, got.finish_reason) == (want.token_ids, want.text, want.finish_reason)
        assert "".join(t.text for t in listen.tokens) + listen.done.text == want.text
    assert batcher.stats["finished"] == len(cases)


def test_a_row_past_the_context_slides_its_window_as_generate_does(engine):
    batcher = Batcher(engine, parallel=2)
    batcher.start()
    text = (REPO / "gptcli" / "assets" / "tinyshakespeare.txt").read_text()[:1100]  # over 250 tokens
    assert len(engine.encode([text])[0]) == engine.config.block_size
    long, a = row(engine, text, max_new_tokens=20, greedy=True)  # full at once: it slides, then steps
    short, b = row(engine, "KING:", max_new_tokens=10, seed=2, top_p=1.0)
    batcher.submit([short, long])
    assert a.event.wait(120) and b.event.wait(120)
    batcher.stop()
    assert a.done.output.token_ids == engine.complete(text, max_new_tokens=20, greedy=True)[0].token_ids


def test_a_cancelled_row_leaves_within_a_step_and_the_queue_is_bounded(engine):
    batcher = Batcher(engine, parallel=1, max_queue=1)
    batcher.start()
    first, a = row(engine, "A", max_new_tokens=250, greedy=True)
    batcher.submit([first])
    second, b = row(engine, "B", max_new_tokens=5, greedy=True)
    batcher.submit([second])  # waits for the place
    with pytest.raises(QueueFull):
        batcher.submit([row(engine, "C", max_new_tokens=5, greedy=True)[0]])
    while not a.tokens:
        time.sleep(0.001)
    first.cancel()
    assert b.event.wait(30)  # the waiting row got the place
    assert len(a.tokens) < 250 and a.done is None and batcher.stats["cancelled"] == 1
    batcher.stop()


def test_stop_ends_every_row_with_a_shutdown_event(engine):
    batcher = Batcher(engine, parallel=1)
    batcher.start()
    rows = [row(engine, p, max_new_tokens=200, greedy=True) for p in ("A", "B")]
    batcher.submit([r for r, _ in rows])
    while not rows[0][1].tokens:
        time.sleep(0.001)
    batcher.stop()
    for _, listen in rows:
        assert isinstance(listen.done, Done) and listen.done.kind == "shutdown"
    with pytest.raises(QueueFull):
        batcher.submit([row(engine, "C", max_new_tokens=5, greedy=True)[0]])


def test_cache_keep_and_join_keep_logits_equal_to_a_full_forward(engine, monkeypatch):
    """Over fresh memory that holds NaN: masked padding must not read it (0 x NaN is NaN)."""
    real = torch.Tensor.new_empty
    monkeypatch.setattr(torch.Tensor, "new_empty",
                        lambda self, *size, **kw: real(self, *size, **kw).fill_(float("nan")))
    model = engine.model
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    with torch.inference_mode():
        batch = engine.decoder()
        batch.prefill([prompts[0]])
        for p in prompts[1:]:
            d = engine.decoder()
            d.prefill([p])
            batch.join(d)
        contexts = [list(p) for p in prompts]
        for step in range(4):
            if step == 2:  # the longest row leaves: its leading positions go
                batch.keep([1, 2])
                contexts = contexts[1:]
            tokens = [20 + step + i for i in range(len(contexts))]
            logits = batch.step(torch.tensor(tokens))
            for i, t in enumerate(tokens):
                contexts[i].append(t)
                full, _ = model(torch.tensor([contexts[i]]))
                torch.testing.assert_close(logits[i], full[0, -1], atol=1e-4, rtol=1e-4)
        assert batch.cache.pos == max(len(c) for c in contexts)


def test_a_temperature_below_float32s_range_samples_as_greedy(engine):
    from gptcli.config import SampleConfig
    from gptcli.generation.sampling import process_logits

    logits = torch.randn(3, 50)
    scores = process_logits(logits, SampleConfig(temperature=1e-300).validate(), None)
    assert torch.isfinite(scores.softmax(-1)).all()
    assert torch.equal(scores.softmax(-1).argmax(-1), logits.argmax(-1))
