#!/usr/bin/env bash
# Build llama.cpp's llama-server on the CPU from the peer tarball, once per machine, and
# print the binary's path. It is the real server of the RemoteEngine integration test.
#
# Usage: scripts/build_llama_server.sh [TARBALL]
#   TARBALL defaults to $LLAMA_CPP_TARBALL, then ../shared/peers/llama.cpp-src.tar.xz.
# The build lives outside the checkout, in $AGENTCORE_HOME/llama-server (default
# ~/.cache/agentcore/llama-server), and is skipped when the binary is already there. It
# takes 10-15 minutes on two free cores. The binary finds its shared libraries by an
# absolute RPATH into build/bin, so it is built in its final place.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
tarball="${1:-${LLAMA_CPP_TARBALL:-$here/../shared/peers/llama.cpp-src.tar.xz}}"
dest="${AGENTCORE_HOME:-$HOME/.cache/agentcore}/llama-server"
bin="$dest/build/bin/llama-server"

if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
# One build at a time: a second caller waits for the first, then finds the binary.
mkdir -p "$(dirname "$dest")"
exec 9>"$dest.lock"
flock 9
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
[ -f "$tarball" ] || { echo "llama.cpp source tarball not found at $tarball (set LLAMA_CPP_TARBALL)" >&2; exit 3; }
command -v cmake >/dev/null || { echo "cmake is required to build llama-server (apt-get install cmake g++)" >&2; exit 3; }

# The tarball holds the source tree at its top (CMakeLists.txt first).
rm -rf "$dest" && mkdir -p "$dest/src"
tar -xf "$tarball" -C "$dest/src"
[ -f "$dest/src/CMakeLists.txt" ] || { echo "$tarball has no CMakeLists.txt at its top" >&2; exit 3; }

cmake -S "$dest/src" -B "$dest/build" -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_UI=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
  -DCMAKE_BUILD_TYPE=Release >"$dest/cmake.log" 2>&1 || { tail -20 "$dest/cmake.log" >&2; exit 1; }
cmake --build "$dest/build" --target llama-server -j "$(nproc)" >"$dest/build.log" 2>&1 \
  || { tail -30 "$dest/build.log" >&2; exit 1; }
echo "$bin"
