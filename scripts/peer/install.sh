#!/usr/bin/env bash
# Install node-llama-cpp 3.21.1 (pinned by package-lock.json) with llama.cpp's prebuilt CPU
# binary for this machine, once: for the export consumer test (tests/llamacpp.rs) and the
# peer benchmark (scripts/peer-llamacpp.sh). --ignore-scripts: its install step would build
# or download. The binaries come as optional packages, CUDA and Vulkan ones included
# (730 MB); only this machine's CPU one is installed (83 MB).
set -euo pipefail
cd "$(dirname "$0")"
[[ -d node_modules/node-llama-cpp ]] && exit 0
arch=$(uname -m | sed 's/x86_64/x64/; s/aarch64/arm64/')
quiet=(--ignore-scripts --omit=optional --no-audit --no-fund --loglevel=error)
npm ci "${quiet[@]}"
npm install --no-save "${quiet[@]}" "@node-llama-cpp/linux-$arch@3.21.1"
