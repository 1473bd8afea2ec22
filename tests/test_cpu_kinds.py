"""The CPU-dependent choices: the capability probe, the paths it picks on each kind of CPU
(answers faked both ways), and gptcli's own Muon step against torch's."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from gptcli import device as dev
from gptcli.config import ModelConfig, TrainConfig
from gptcli.model import GPT
from gptcli.optimizers import Muon, make_optimizer, orthogonalise

EPYC_AVX512 = {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16"}
EPYC_AVX2 = {"avx2", "fma", "f16c"}
SAPPHIRE_RAPIDS = {"avx2", "avx512f", "avx512bw", "avx512_vnni", "amx_bf16", "amx_tile"}
GRAVITON3 = {"fp", "asimd", "bf16", "i8mm", "sve"}


def caps(**kw) -> dev.CpuCaps:
    return dev.CpuCaps(**{**dict(avx2=True, avx512=False, bf16=False, vnni=False, fp16_kernel=True), **kw})


@pytest.mark.parametrize("flags, avx512, bf16, vnni", [
    (EPYC_AVX512, True, True, True),
    (EPYC_AVX2, False, False, False),
    (SAPPHIRE_RAPIDS, True, True, True),
    (GRAVITON3, False, True, False),
    (set(), False, False, False),  # /proc/cpuinfo unreadable: nothing is assumed native
])
def test_the_probe_reads_what_the_cpu_does_natively(monkeypatch, flags, avx512, bf16, vnni):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    got = dev.probe_cpu(flags, aten_capability="")
    assert (got.avx512, got.bf16, got.vnni) == (avx512, bf16, vnni)
    assert got.avx2 == ("avx2" in flags)


def test_a_cpu_forced_down_to_avx2_counts_as_one(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not dev.probe_cpu(EPYC_AVX512, aten_capability="").bf16  # oneDNN may not use its bf16 instructions
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    forced = dev.probe_cpu(EPYC_AVX512, aten_capability="avx2")
    assert not forced.avx512 and not forced.bf16


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_each_cpu_kind_gets_its_own_paths(monkeypatch, native, expected):
    monkeypatch.setattr(dev, "cpu_caps", lambda: caps(avx512=native, bf16=native))
    cpu = torch.device("cpu")
    assert dev.fast_matmul_dtype(cpu) == expected
    assert dev.pick_precision("auto", cpu).amp_dtype == (torch.bfloat16 if native else None)
    opt = make_optimizer(GPT(ModelConfig(vocab_size=64, block_size=8, n_layer=1, n_head=2, n_embd=16)),
                         TrainConfig(optimizer="muon"), cpu)
    (muon,) = [o for o in opt.parts if isinstance(o, Muon)]
    assert muon.ns_dtype == expected  # never the emulated bf16 on a CPU without it
    assert ("bf16 native" in dev.cpu_caps().describe()) == native


def _steps(opt_class, weights, grads, **kw):
    params = [nn.Parameter(w.clone()) for w in weights]
    opt = opt_class(params, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw", **kw)
    for g in grads:
        for p, gp in zip(params, g):
            p.grad = gp.clone()
        opt.step()
    return [p.detach() for p in params], opt


def test_muon_in_bf16_is_torchs_muon_bit_for_bit_and_in_float32_within_bf16_rounding():
    torch.manual_seed(0)
    shapes = [(48, 16), (16, 48), (32, 32)]  # tall, wide, square
    weights = [torch.randn(s) * 0.1 for s in shapes]
    grads = [[torch.randn(s) for s in shapes] for _ in range(3)]
    theirs, torch_opt = _steps(torch.optim.Muon, weights, grads)
    ours, ours_opt = _steps(Muon, weights, grads, ns_dtype=torch.bfloat16)
    for a, b in zip(theirs, ours):
        assert torch.equal(a, b)
    assert set(ours_opt.state_dict()["state"][0]) == set(torch_opt.state_dict()["state"][0])  # same checkpoints
    in_float32, _ = _steps(Muon, weights, grads, ns_dtype=torch.float32)
    for w, a, b in zip(weights, theirs, in_float32):
        step = (a - w).norm()
        assert (a - b).norm() <= 0.02 * step, ((a - b).norm(), step)  # bf16 keeps 8 bits: ~0.4% a rounding
        assert not torch.equal(a, b)


def test_orthogonalise_gives_singular_values_near_one_in_float32():
    torch.manual_seed(1)
    g = torch.randn(64, 24)
    s = torch.linalg.svdvals(orthogonalise(g, (3.4445, -4.7750, 2.0315), 5, 1e-7, torch.float32))
    assert 0.5 < float(s.min()) and float(s.max()) < 1.5  # the quintic's band, per the Muon papers


@pytest.mark.parametrize("shape", [(768, 256), (256, 1024), (64, 64), (40, 64)])
def test_orthogonalise_in_float32_matches_the_direct_loop_in_float64(shape):
    torch.manual_seed(2)
    g = torch.randn(shape)
    coefficients = (3.4445, -4.7750, 2.0315)
    exact = orthogonalise(g.double(), coefficients, 5, 1e-7, torch.float64)  # the Gram form where g is 1.5x wide
    x = g.double().T if shape[0] > shape[1] else g.double()
    x = x / x.norm()
    for _ in range(5):  # the direct loop, written out
        gram = x @ x.T
        x = coefficients[0] * x + (coefficients[1] * gram + coefficients[2] * gram @ gram) @ x
    assert torch.allclose(exact, x.T if shape[0] > shape[1] else x, atol=1e-10)
    got = orthogonalise(g, coefficients, 5, 1e-7, torch.float32)
    assert got.dtype == torch.float32 and got.shape == g.shape
    assert (got.double() - exact).abs().max() < 1e-5


@pytest.mark.parametrize("native", [True, False])
def test_info_names_what_this_cpu_runs_natively(monkeypatch, capsys, native):
    import json

    from gptcli import workspace
    from gptcli.commands import info

    from helpers import cli

    monkeypatch.setattr(info, "cpu_caps", lambda: caps(avx512=native, bf16=native))
    code, out, err = cli(monkeypatch, capsys, "info", str(workspace.SHIPPED))
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("this cpu"))
    assert ("bf16 native" if native else "bf16 emulated, so float32") in line
    code, out, _ = cli(monkeypatch, capsys, "info", str(workspace.SHIPPED), "--json")
    assert json.loads(out)["this_cpu"]["bf16"] is native
