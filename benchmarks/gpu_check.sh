#!/usr/bin/env bash
# Everything the CUDA path needs checked, in one call on a machine with an NVIDIA GPU:
#
#   bash benchmarks/gpu_check.sh            # all parts (about 10-15 minutes on an H100)
#   bash benchmarks/gpu_check.sh tests mfu  # some of: tests train mfu generate ddp
#
# tests     the whole test suite with CUDA visible (tests/test_cuda.py runs, not skips)
# train     `gptcli train --preset gpt2` in bf16 on tinyshakespeare, without and with --compile
# mfu       benchmarks/train_mfu.py: tokens/s and MFU of the gpt2 training step (peak: H100 SXM)
# generate  benchmarks/generate.py --shapes gpt2 --device cuda: gptcli against transformers
# ddp       torchrun --nproc-per-node 1 (NCCL), and 2 processes when there are 2 GPUs
#
# It installs the project only (no network needed when torch, transformers and the
# project's dependencies are there) and prints one table at the end; the logs of every
# part are kept in $GPU_CHECK_DIR (default /tmp/gptcli-gpu-check).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
DIR=${GPU_CHECK_DIR:-/tmp/gptcli-gpu-check}
mkdir -p "$DIR"
: >"$DIR/table.tsv"
PARTS=${*:-tests train mfu generate ddp}
CORPUS=$REPO/gptcli/assets/tinyshakespeare.txt

row() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$DIR/table.tsv"; }

python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "gpu_check: no CUDA GPU is visible to torch here" >&2; exit 1; }
pip install -q --no-deps -e . >"$DIR/install.log" 2>&1 || echo "gpu_check: pip install -e . failed (see $DIR/install.log); using the source tree" >&2
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
GPU=$(python -c "import torch; print(torch.cuda.get_device_name(), '|', torch.cuda.device_count(), 'GPU(s) | torch', torch.__version__)")
echo "gpu_check on $GPU" >&2
(cd "$DIR" && python -m gptcli tokenizer train "$CORPUS" --vocab-size 4096 --out tok --overwrite >/dev/null 2>&1)

for part in $PARTS; do
  case $part in
  tests)
    python -m pytest -q -p no:cacheprovider >"$DIR/tests.log" 2>&1
    row "test suite, CUDA visible" "$(tail -n 1 "$DIR/tests.log")" "$DIR/tests.log"
    python -m pytest -q -p no:cacheprovider tests/test_cuda.py >"$DIR/tests_cuda.log" 2>&1
    row "tests/test_cuda.py" "$(tail -n 1 "$DIR/tests_cuda.log")" "$DIR/tests_cuda.log" ;;
  train)
    for flag in --no-compile --compile; do
      run=$DIR/gpt2$flag
      (cd "$DIR" && python -m gptcli train "$CORPUS" --preset gpt2 --dtype bfloat16 --device cuda --tokenizer tok \
          --max-steps 60 --eval-interval 30 --log-interval 10 $flag --out "$run" --overwrite) >"$run.log" 2>&1
      rc=$?
      summary=$(python - "$run" "$rc" <<'EOF'
import json, sys
from pathlib import Path
run, rc = Path(sys.argv[1]), sys.argv[2]
try:
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["type"] == "train"]
    ev = [r for r in records if r["type"] == "eval"]
    tps = sorted(r["tokens_per_sec"] for r in train[1:])  # the first interval holds the compile
    print(f"exit {rc}, {tps[len(tps) // 2]:,.0f} tok/s (median of {len(tps)} log intervals), "
          f"val loss {ev[-1]['val_loss']:.3f} at step {ev[-1]['step']}")
except Exception as e:
    print(f"exit {rc}, no metrics ({e})")
EOF
)
      row "gptcli train --preset gpt2 bf16 $flag" "$summary" "$run.log"
    done ;;
  mfu)
    for flag in "" --no-compile; do
      python benchmarks/train_mfu.py --batch-size 16 --steps 30 $flag >"$DIR/mfu$flag.log" 2>&1
      row "train_mfu.py gpt2 bf16 ${flag:-(compile)}" "$(tail -n 1 "$DIR/mfu$flag.log")" "$DIR/mfu$flag.log"
    done ;;
  generate)
    python benchmarks/generate.py --shapes gpt2 --device cuda --engines gptcli transformers --new 128 --repeats 3 \
      >"$DIR/generate.log" 2>&1
    while IFS= read -r line; do
      row "generate.py gpt2 cuda fp32" "$line" "$DIR/generate.log"
    done < <(grep -E '^gpt2 ' "$DIR/generate.log" || tail -n 1 "$DIR/generate.log") ;;
  ddp)
    n=1
    [ "$(python -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ] && n="1 2"
    for nproc in $n; do
      run=$DIR/ddp$nproc
      rm -rf "$run"
      (cd "$DIR" && torchrun --standalone --nproc-per-node "$nproc" -m gptcli train "$CORPUS" --tokenizer tok \
          --device cuda --max-steps 40 --eval-interval 20 --out "$run" && \
       torchrun --standalone --nproc-per-node "$nproc" -m gptcli train --resume "$run" --max-steps 60) \
          >"$run.log" 2>&1
      rc=$?
      row "torchrun --nproc-per-node $nproc (NCCL), 40 steps + resume to 60" \
          "exit $rc, $(python -m gptcli info "$run" --json 2>/dev/null | python -c 'import json,sys; t=json.load(sys.stdin)["training"]; print(f"steps {t[\"steps\"]}, world_size {t[\"world_size\"]}, best val {t[\"best_val_loss\"]:.3f}")' 2>/dev/null)" \
          "$run.log"
    done ;;
  *) echo "gpu_check: unknown part '$part' (tests train mfu generate ddp)" >&2; exit 2 ;;
  esac
done

echo
echo "gpu_check on $GPU, $(date -u +%Y-%m-%d)"
python - "$DIR/table.tsv" <<'EOF'
import sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
width = max((len(r[0]) for r in rows), default=10)
for what, result, log in rows:
    print(f"{what:<{width}}  {result}")
print(f"\nlogs: {rows[0][2].rsplit('/', 1)[0] if rows else ''}")
EOF
