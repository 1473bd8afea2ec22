"""`gptcli export-gguf`: a run folder as one GGUF file that llama.cpp (and ollama) runs.

Written with the `gguf` package from llama.cpp's authors (GGUFWriter, and its quants
module for q8_0); the names, the refusals and the tokenizer's fields are
store/gguf_names.py's. The file is written beside OUT and renamed over it, so on any
error OUT is left as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptcli import __version__
from gptcli.commands.hf import HFResult  # the exports report alike
from gptcli.errors import UsageError
from gptcli.store import atomic, folders, gguf_names, weights
from gptcli.store import checkpoint as ckpt

DTYPES = ("float32", "float16", "q8_0")


@dataclass
class ExportGGUFRequest:
    run: Path
    out: Path
    dtype: str = "float32"  # of the matrices; norms and biases stay float32, as llama.cpp's converter keeps them
    overwrite: bool = False


def _gguf():
    try:
        import gguf
    except ImportError:
        raise UsageError("export-gguf needs the gguf package: pip install 'gptcli[gguf]' (or pip install gguf)"
                         ) from None
    return gguf


def _stored(gguf, name: str, array: np.ndarray, dtype: str) -> tuple[np.ndarray, object]:
    """(data, GGML type) of one tensor. Only matrices take the chosen dtype; q8_0 packs
    rows in blocks of 32, so a matrix whose rows are not a multiple of 32 falls back to
    float16, as llama.cpp's own converter does."""
    Q = gguf.GGMLQuantizationType
    if array.ndim < 2 or dtype == "float32":
        return array, Q.F32
    if dtype == "q8_0" and array.shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0] == 0:
        return gguf.quants.quantize(array, Q.Q8_0), Q.Q8_0
    return array.astype(np.float16), Q.F16


def run(req: ExportGGUFRequest) -> HFResult:
    if req.dtype not in DTYPES:
        raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, got {req.dtype!r}")
    run_dir, out = req.run, req.out
    cfg = ckpt.model_config(ckpt.read_config(run_dir), run_dir)
    if (why := gguf_names.refusal(cfg, run_dir)) is not None:
        raise UsageError(why)
    folders.check_file_out(out, "OUT", req.overwrite, reads=[run_dir / ckpt.WEIGHTS, run_dir / ckpt.CONFIG])
    gguf = _gguf()
    model, tok, _ = ckpt.load_run(run_dir)
    tokens, types, merges = gguf_names.vocabulary(tok, run_dir)
    tensors = gguf_names.gguf_tensors(weights.weights_dict(model), cfg)
    file_type = {"float32": gguf.LlamaFileType.ALL_F32, "float16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[req.dtype]
    with atomic.atomic_path(out) as tmp:
        w = gguf.GGUFWriter(tmp, arch=gguf_names.ARCH)
        w.add_name(run_dir.resolve().name)
        w.add_string("gptcli.source_run", str(run_dir.resolve()))
        w.add_string("gptcli.version", __version__)
        w.add_file_type(file_type)
        w.add_context_length(cfg.block_size)
        w.add_embedding_length(cfg.n_embd)
        w.add_feed_forward_length(4 * cfg.n_embd)
        w.add_block_count(cfg.n_layer)
        w.add_head_count(cfg.n_head)
        w.add_layer_norm_eps(cfg.layer_norm_eps)
        w.add_tokenizer_model(gguf_names.TOKENIZER_MODEL)
        w.add_tokenizer_pre(gguf_names.PRE_TOKENIZER)
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(tok.eot_id)
        w.add_eos_token_id(tok.eot_id)
        w.add_add_bos_token(False)  # gptcli feeds a prompt's own tokens, nothing before them
        for name, array in tensors.items():
            data, qtype = _stored(gguf, name, array, req.dtype)
            w.add_tensor(name, data, raw_dtype=qtype)  # q8_0's bytes: gguf derives the shape
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    size = out.stat().st_size
    return HFResult({"out": str(out), "dtype": req.dtype, "params": model.num_params(), "bytes": size,
                             "tensors": len(tensors), "vocab_size": tok.vocab_size},
                            f"exported {run_dir} -> {out} ({req.dtype}, {size / 2**20:.1f} MiB): run it with "
                            f"llama.cpp, e.g. llama-cli -m {out}")
