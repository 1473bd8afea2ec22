"""gptcli's generation against HF transformers' GPT2LMHeadModel.generate, same weights.

Builds a random GPT-2 of the `tiny` shape (4 layers, 4 heads, 256 wide, context 256,
vocabulary 4096; or --shape gpt2, the 124M model), loads the same tensors into both, and
times, on the CPU (or --device cuda) in one process, alternating runs, medians over
--repeats:
  greedy at batch 1, top-k sampling at batch 1, beam search with 4 beams, and greedy
  with 8 prompts in one batch.
End-of-text is disabled on both sides so every run makes exactly --new tokens.
Reports tokens/s, the ratio to HF, and whether the greedy tokens are identical.

    pip install -e ".[dev]" && python benchmarks/generate.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gptcli.config import ModelConfig, SampleConfig
from gptcli.decoding import beam_search, decode_steps
from gptcli.hf_weights import to_hf_state_dict
from gptcli.model import GPT

SHAPES = {  # the `tiny` preset with the default vocabulary, and GPT-2 small (124M)
    "tiny": ModelConfig(vocab_size=4096, block_size=256, n_layer=4, n_head=4, n_embd=256),
    "gpt2": ModelConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
}


def build(cfg: ModelConfig, device: torch.device):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    ours = GPT(cfg).eval()
    hf_cfg = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
                        n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        activation_function="gelu_new")
    hf = GPT2LMHeadModel(hf_cfg).eval()
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(ours.state_dict()), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)  # lm_head is tied to wte
    return ours.to(device), hf.to(device)


def run_ours(model, case, prompts, new):
    if case == "beam4":
        cfg = SampleConfig(strategy="beam", num_beams=4, max_new_tokens=new)
        return [beam_search(model, prompts[0], cfg, -1)[0].tokens]
    if case == "topk":
        cfg = SampleConfig(strategy="sample", max_new_tokens=new, temperature=1.0, top_k=50, top_p=None)
        gens = [torch.Generator(device=model.lm_head.weight.device).manual_seed(0) for _ in prompts]
    else:
        cfg = SampleConfig(strategy="greedy", max_new_tokens=new)
        gens = None
    steps = list(decode_steps(model, prompts, cfg, -1, gens))
    return [[s[0][i] for s in steps] for i in range(len(prompts))]


def run_hf(model, case, prompts, new):
    ids = torch.tensor(prompts, device=model.device)
    kw = dict(max_new_tokens=new, min_new_tokens=new, pad_token_id=0, eos_token_id=None,
              attention_mask=torch.ones_like(ids))
    if case == "beam4":
        out = model.generate(ids, num_beams=4, do_sample=False, early_stopping=False, **kw)
    elif case == "topk":
        out = model.generate(ids, do_sample=True, top_k=50, top_p=1.0, temperature=1.0, **kw)
    else:
        out = model.generate(ids, do_sample=False, **kw)
    return out[:, ids.shape[1]:].tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new", type=int, default=128, help="new tokens per output")
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (float32 on both sides)")
    args = ap.parse_args()
    import transformers

    device = torch.device(args.device)
    cfg = SHAPES[args.shape]
    ours, hf = build(cfg, device)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, cfg.vocab_size, (8, args.prompt_len), generator=g).tolist()
    cases = {"greedy": prompt[:1], "topk": prompt[:1], "beam4": prompt[:1], "greedy_b8": prompt}
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, threads {torch.get_num_threads()}"
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.shape} shape, {where}")
    print(f"{'case':<10} {'gptcli tok/s':>13} {'HF tok/s':>10} {'ratio':>7}  tokens identical")
    with torch.inference_mode():
        for case, prompts in cases.items():
            run_ours(ours, case, prompts, 8), run_hf(hf, case, prompts, 8)  # warm up
            t_ours, t_hf = [], []
            for _ in range(args.repeats):
                t = time.perf_counter()
                a = run_ours(ours, case, prompts, args.new)
                t_ours.append(time.perf_counter() - t)
                t = time.perf_counter()
                b = run_hf(hf, case, prompts, args.new)
                t_hf.append(time.perf_counter() - t)
            n_out = len(a) if case != "beam4" else 1
            ours_tps = n_out * args.new / statistics.median(t_ours)
            hf_tps = n_out * args.new / statistics.median(t_hf)
            same = "n/a (sampled)" if case == "topk" else str(a == b)
            print(f"{case:<10} {ours_tps:>13,.0f} {hf_tps:>10,.0f} {ours_tps / hf_tps:>6.2f}x  {same}", flush=True)


if __name__ == "__main__":
    main()
