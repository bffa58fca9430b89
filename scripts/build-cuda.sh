#!/usr/bin/env bash
# Build `card` with --features cuda on a machine without a CUDA toolkit: the compiler comes
# from PyPI's wheels (nvcc 13.4 — cudarc 0.19 accepts up to 13.4 — with the matching
# runtime headers and NVVM). No GPU is needed to build; the binary loads the CUDA driver
# libraries at run time. Output: target-cuda/release/card.
#
#   scripts/build-cuda.sh [compute capability, default 90 (H100/H200)]
set -euo pipefail
cap="${1:-90}"
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${CUDA_VENV:-$root/.cuda-venv}"
if [ ! -x "$venv/bin/pip" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q "nvidia-cuda-nvcc==13.4.92" "nvidia-cuda-crt==13.4.92" \
    "nvidia-cuda-runtime==13.4.*" "nvidia-nvvm==13.4.*" "nvidia-cuda-cccl" \
    "nvidia-cublas==13.4.*" "nvidia-cuda-nvrtc==13.4.*" "nvidia-curand"
cuda="$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')"
chmod +x "$cuda"/bin/* "$cuda"/nvvm/bin/* 2>/dev/null || true
"$cuda/bin/nvcc" --version | tail -1
# The link needs unversioned library names, and the driver library (libcuda), which only a
# GPU machine has: a stub with the driver symbols cudarc uses, carrying the real soname, so
# the binary loads the machine's own libcuda.so.1 at run time.
(cd "$cuda/lib" && for f in libcublas.so.13 libcublasLt.so.13 libcudart.so.13 libnvrtc.so.13 libcurand.so.10; do
    ln -sf "$f" "${f%.so.*}.so"; done)
stub="$root/target-cuda/cuda-stub"
mkdir -p "$stub"
export PATH="$cuda/bin:$PATH" CUDA_ROOT="$cuda" CUDA_PATH="$cuda" CUDA_TOOLKIT_ROOT_DIR="$cuda" \
    CUDA_COMPUTE_CAP="$cap" CARGO_TARGET_DIR="$root/target-cuda" \
    RUSTFLAGS="-L $stub -L $cuda/lib -C link-arg=-Wl,--no-as-needed"
cd "$root"
cargo build --release --features cuda --lib
nm -u "$root"/target-cuda/release/deps/libcudarc-*.rlib 2>/dev/null | awk '{print $2}' \
    | grep -E '^cu[A-Z]' | sort -u | sed 's/.*/void &(void) {}/' > "$stub/stub.c"
gcc -shared -fPIC -o "$stub/libcuda.so" -Wl,-soname,libcuda.so.1 "$stub/stub.c"
cargo build --release --features cuda
strip "$root/target-cuda/release/card"
ls -la "$root/target-cuda/release/card"
echo "run it with LD_LIBRARY_PATH=$cuda/lib (or the GPU machine's CUDA 13 libraries)"
