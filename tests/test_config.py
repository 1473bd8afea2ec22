"""Settings: one definition each, checked the same whether they came from flags or files."""

from __future__ import annotations

import pytest

from gptcli.cli.options import help_text
from gptcli.config import ModelConfig, SampleConfig, TrainConfig, flag
from gptcli.errors import SettingError, UsageError, first_line
from gptcli.settings import from_dict, specs


@pytest.mark.parametrize("cfg, message", [
    (ModelConfig(n_layer=0), "n_layer must be between 1 and 1,024, got 0"),
    (ModelConfig(n_layer=2.0), "n_layer must be an integer, got 2.0"),
    (ModelConfig(n_layer=True), "n_layer must be an integer, got True"),
    (ModelConfig(dropout=1.0), "dropout must be in [0, 1), got 1.0"),
    (ModelConfig(attn_dropout=-0.1), "attn_dropout must be in [0, 1), got -0.1"),
    (ModelConfig(pos_encoding="rotary"), "pos_encoding must be learned or sinusoidal, got 'rotary'"),
    (ModelConfig(n_embd=30, n_head=4), "n_embd 30 is not divisible by n_head 4"),
    (TrainConfig(lr=float("inf")), "lr must be a finite number, got inf"),
    (TrainConfig(lr=0.0), "lr must be in (0, 10], got 0.0"),
    (TrainConfig(lr=10.0000001), "lr must be in (0, 10], got 10.0000001"),
    (TrainConfig(max_time=1e8), "max_time must be at most 2777h46m40s, got 27777h46m40s"),
    (ModelConfig(pos_encoding="{x}"), "pos_encoding must be learned or sinusoidal, got '{x}'"),
    (TrainConfig(device="{}"), "device must be auto, cpu, cuda or mps, got '{}'"),
    (TrainConfig(min_lr=0.5, lr=0.1), "min_lr must be between 0 and lr (0.1), got 0.5"),
    (TrainConfig(seed=-1), "seed must be between 0 and 4,294,967,295, got -1"),
    (TrainConfig(device="tpu"), "device must be auto, cpu, cuda or mps, got 'tpu'"),
    (SampleConfig(num_return=3, num_beams=2), "num_return must be between 1 and num_beams (2), got 3"),
    (SampleConfig(stop=("",)), "stop strings must not be empty"),
])
def test_bad_settings_are_named(cfg, message):
    with pytest.raises(SettingError) as raised:
        cfg.validate()
    assert raised.value.render() == message


def test_the_cli_names_a_setting_as_its_flag():
    with pytest.raises(SettingError) as raised:
        ModelConfig(n_embd=30, n_head=4).validate()
    assert raised.value.render(flag) == "--n-embd 30 is not divisible by --n-head 4"
    assert flag("num_beams") == "--beams" and flag("max_new_tokens") == "--max-new-tokens"


def test_help_shows_each_presets_default_and_the_range():
    assert help_text(TrainConfig, "lr").endswith("[preset: tiny 0.004 with muon, else 0.002, small 0.001, medium "
                                                 "0.0006, gpt2 0.0006; in (0, 10]]")
    assert help_text(TrainConfig, "optimizer").endswith("[preset: tiny muon for a new GPT (train); others adamw]")
    assert help_text(ModelConfig, "attn_dropout").endswith("[preset: tiny 0 with muon, else --dropout; others "
                                                           "--dropout; in [0, 1)]")
    assert help_text(TrainConfig, "grad_accum").endswith("[default: 1; between 1 and 65,536]")
    assert "default: lr/10" in help_text(TrainConfig, "min_lr")


def test_every_setting_has_help_and_every_number_a_range():
    for cls in (ModelConfig, TrainConfig, SampleConfig):
        for name, (kind, spec) in specs(cls).items():
            assert spec.help, name
            if kind in (int, float, int | None, float | None):
                assert spec.low is not None and (spec.high is not None or name == "vocab_size"), name


def test_from_dict_is_strict_about_keys_and_types():
    assert from_dict(ModelConfig, {"n_layer": 2}, "x") == ModelConfig(n_layer=2)
    with pytest.raises(UsageError, match="x has unknown fields: depth"):
        from_dict(ModelConfig, {"depth": 2}, "x")
    with pytest.raises(UsageError, match="x: n_head must be an integer, got '4'"):
        from_dict(ModelConfig, {"n_head": "4"}, "x")
    with pytest.raises(UsageError, match="x must be a JSON object"):
        from_dict(ModelConfig, [1, 2], "x")
    assert from_dict(SampleConfig, {"stop": ["a"]}, "x").stop == ("a",)


def test_first_line_of_an_error():
    assert first_line(ValueError("one\ntwo")) == "one"
    assert first_line(ValueError()) == "ValueError"
