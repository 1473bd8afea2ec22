"""`gptcli info`: what a run folder holds, read from its config and the weights' header
alone (no tensor is loaded)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from gptcli.device import CpuCaps, cpu_caps
from gptcli.errors import UsageError
from gptcli.store import checkpoint as ckpt
from gptcli.store.weights import count_params


@dataclass
class InfoRequest:
    run: Path


@dataclass
class InfoResult:
    run: Path
    params: int
    model: dict
    tokenizer: dict
    training: dict
    resumable: bool
    cpu: CpuCaps  # this machine's, which decides how the run would train and decode here

    def to_json(self) -> dict:
        return {"run": str(self.run), "params": self.params, "model": self.model, "tokenizer": self.tokenizer,
                "training": self.training, "resumable": self.resumable, "this_cpu": dataclasses.asdict(self.cpu)}

    def to_text(self) -> str:
        m, t, tr = self.model, self.tokenizer, self.training
        shape = (f"{m['arch']}, {m['n_layer']} layers, {m['n_embd']} wide, trained on windows of {m['block_size']}"
                  if m.get("arch", "gpt") != "gpt" else
                  f"gpt, {m['n_layer']} layers, {m['n_head']} heads, {m['n_embd']} wide, context {m['block_size']}, "
                  f"{m['pos_encoding']} positions")
        attention = f" (attention {m['attn_dropout']})" if m.get("attn_dropout") is not None else ""
        lines = [
            f"run          {self.run}",
            f"parameters   {self.params:,}",
            f"model        {shape}, dropout {m['dropout']}{attention}, bias {m['bias']}",
            f"tokenizer    {t.get('vocab_size')} tokens (byte-level BPE)",
        ]
        if tr:
            lines.append(f"trained      {tr.get('steps', 0)} steps, {tr.get('tokens_seen', 0):,} tokens, "
                         f"{tr.get('elapsed_sec', 0):.0f}s on {tr.get('device', '?')} {tr.get('dtype', '')}"
                         + (f", {tr['world_size']} processes (torchrun)" if tr.get("world_size", 1) > 1 else ""))
            recipe = tr.get("config") or {}
            if recipe:
                lines.append(f"recipe       {recipe.get('optimizer', 'adamw')}, lr {recipe.get('lr', 0):g}, "
                             f"weight decay {recipe.get('weight_decay', 0):g}, "
                             f"{recipe.get('schedule', 'cosine')} schedule, batch {recipe.get('batch_size')}"
                             + (f" x {recipe['grad_accum']}" if recipe.get("grad_accum", 1) > 1 else "")
                             + (f", dropout and weight decay beyond {recipe['regularize_beyond']:g} passes"
                                if recipe.get("regularize_beyond") else ""))
            if tr.get("best_val_loss") is not None:
                bpb = tr.get("best_val_bpb")
                lines.append(f"best val     loss {tr['best_val_loss']:.4f} at step {tr.get('best_step')}"
                             + (f", {bpb:.4f} bits/byte" if bpb else ""))
            if tr.get("corpus"):
                lines.append(f"corpus       {', '.join(tr['corpus'][:5])}" + (" ..." if len(tr["corpus"]) > 5 else ""))
            lines.append(f"resumable    {'yes' if self.resumable else 'no'}")
        lines.append(f"this cpu     {self.cpu.describe()}")
        return "\n".join(lines)


def run(req: InfoRequest) -> InfoResult:
    run_dir = req.run
    doc = ckpt.read_config(run_dir)
    ckpt.model_config(doc, run_dir)  # a config.json that does not describe a model is an error here too
    weights = run_dir / ckpt.WEIGHTS
    if not weights.is_file():
        raise UsageError(f"{run_dir} has no {ckpt.WEIGHTS}")
    try:
        ckpt.resume_dir(run_dir)
        resumable = True
    except UsageError:
        resumable = False
    return InfoResult(run_dir, count_params(weights), doc["model"], doc.get("tokenizer", {}), doc.get("training", {}),
                      resumable, cpu_caps())
