#!/usr/bin/env bash
# Installs llama-cpp-python (which compiles llama.cpp from the registry's source
# distribution) once, CPU only, into a cache folder that tests/test_gguf.py and
# benchmarks/gguf_parity.py add to sys.path. Not part of .ci/run: the compile takes
# minutes on 2 cores, and the parity tests skip with a reason when it is absent.
# A second run is a no-op. Override the place with GPTCLI_LLAMA_CPP_DIR.
set -euo pipefail

DEST="${GPTCLI_LLAMA_CPP_DIR:-$HOME/.cache/gptcli-bench/llama_cpp}"
VERSION="${GPTCLI_LLAMA_CPP_VERSION:-0.3.36}"
PY="${PYTHON:-python}"

mkdir -p "$DEST"
# llama_cpp imports diskcache at import time (its prompt cache); it is pure Python.
if [ ! -d "$DEST/diskcache" ]; then
    "$PY" -m pip install --quiet --no-deps --target "$DEST" diskcache >&2
fi

if PYTHONPATH="$DEST" "$PY" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$VERSION')" 2>/dev/null; then
    echo "llama-cpp-python $VERSION already built in $DEST" >&2
    exit 0
fi

# CPU only: no CUDA/Metal/Vulkan backends; GGML_NATIVE tunes to this CPU's SIMD,
# as a user compiling llama.cpp at home would get.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_NATIVE=ON -DLLAMA_CURL=OFF}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
# --no-deps: its other runtime deps (numpy, typing-extensions, jinja2) are already
# present, and --target would otherwise shadow them with second copies.
nice -n 10 "$PY" -m pip install --no-cache-dir --no-deps --target "$DEST" \
    "llama-cpp-python==$VERSION" >&2
PYTHONPATH="$DEST" "$PY" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, 'in $DEST')" >&2
