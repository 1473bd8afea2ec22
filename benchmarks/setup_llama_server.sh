#!/usr/bin/env bash
# Builds llama.cpp's own HTTP server (llama-server), CPU only, from the llama.cpp source
# that llama-cpp-python's registry source distribution vendors, once, into a cache
# folder: benchmarks/serve.py's peer. Not part of .ci/run (the compile takes many
# minutes on 2 cores). A second run is a no-op. Override the place with
# GPTCLI_LLAMA_SERVER_DIR; prints the binary's path on stdout.
set -euo pipefail

DEST="${GPTCLI_LLAMA_SERVER_DIR:-$HOME/.cache/gptcli-bench/llama_server}"
VERSION="${GPTCLI_LLAMA_CPP_VERSION:-0.3.36}"
PY="${PYTHON:-python}"
BIN="$DEST/build/bin/llama-server"

if [ -x "$BIN" ]; then
    echo "$BIN"
    exit 0
fi
mkdir -p "$DEST"
if [ ! -d "$DEST/src" ]; then
    "$PY" -m pip download --quiet --no-deps --no-binary :all: -d "$DEST/sdist" "llama-cpp-python==$VERSION" >&2
    mkdir -p "$DEST/src"
    tar -xzf "$DEST"/sdist/llama_cpp_python-*.tar.gz -C "$DEST/src" --strip-components=1
fi
# GGML_NATIVE tunes to this CPU's SIMD, as a user compiling llama.cpp at home would get.
cmake -S "$DEST/src/vendor/llama.cpp" -B "$DEST/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF >&2
nice -n 10 cmake --build "$DEST/build" --target llama-server -j "$(nproc)" >&2
echo "$BIN"
