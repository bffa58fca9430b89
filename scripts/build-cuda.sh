#!/usr/bin/env bash
# Build `card` with --features cuda on a machine without a CUDA toolkit: the compiler comes
# from PyPI's wheels (nvcc 13.4 — cudarc 0.19 accepts up to 13.4 — with the matching
# runtime headers and NVVM). No GPU is needed to build; the binary loads the CUDA driver
# libraries at run time. Output: target-cuda/release/card, and the test binaries of the
# device invariants (model, train, decode; run with CARD_TEST_DEVICE=cuda by gpu-check.sh)
# in target-cuda/device-tests/.
#
#   scripts/build-cuda.sh [compute capability, default 90 (H100/H200)] [features, default cuda;
#                          "cuda,nccl" adds the NCCL transport for multi-GPU training]
set -euo pipefail
cap="${1:-90}"
features="${2:-cuda}"
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${CUDA_VENV:-$root/.cuda-venv}"
if [ ! -x "$venv/bin/pip" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q "nvidia-cuda-nvcc==13.4.92" "nvidia-cuda-crt==13.4.92" \
    "nvidia-cuda-runtime==13.4.*" "nvidia-nvvm==13.4.*" "nvidia-cuda-cccl" \
    "nvidia-cublas==13.4.*" "nvidia-cuda-nvrtc==13.4.*" "nvidia-curand"
case "$features" in *nccl*) "$venv/bin/pip" install -q "nvidia-nccl-cu13" ;; esac
cuda="$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')"
chmod +x "$cuda"/bin/* "$cuda"/nvvm/bin/* 2>/dev/null || true
"$cuda/bin/nvcc" --version | tail -1
# The link needs unversioned library names, and the driver library (libcuda), which only a
# GPU machine has: a stub with the driver symbols cudarc uses, carrying the real soname, so
# the binary loads the machine's own libcuda.so.1 at run time.
(cd "$cuda/lib" && for f in libcublas.so.13 libcublasLt.so.13 libcudart.so.13 libnvrtc.so.13 libcurand.so.10; do
    ln -sf "$f" "${f%.so.*}.so"; done)
extra_lib=""
case "$features" in *nccl*)
    nccl="$(find "$("$venv/bin/python" -c 'import nvidia, os; print(nvidia.__path__[0])')" -name 'libnccl.so.*' | head -1)"
    [ -n "$nccl" ] || { echo "libnccl not found in the nvidia-nccl wheel" >&2; exit 1; }
    ln -sf "$(basename "$nccl")" "$(dirname "$nccl")/libnccl.so"
    extra_lib="-L $(dirname "$nccl")" ;;
esac
stub="$root/target-cuda/cuda-stub"
mkdir -p "$stub"
export PATH="$cuda/bin:$PATH" CUDA_ROOT="$cuda" CUDA_PATH="$cuda" CUDA_TOOLKIT_ROOT_DIR="$cuda" \
    CUDA_COMPUTE_CAP="$cap" CARGO_TARGET_DIR="$root/target-cuda" \
    RUSTFLAGS="-L $stub -L $cuda/lib $extra_lib -C link-arg=-Wl,--no-as-needed"
cd "$root"
cargo build --release --features "$features" --lib
nm -u "$root"/target-cuda/release/deps/libcudarc-*.rlib 2>/dev/null | awk '{print $2}' \
    | grep -E '^cu[A-Z]' | sort -u | sed 's/.*/void &(void) {}/' > "$stub/stub.c"
gcc -shared -fPIC -o "$stub/libcuda.so" -Wl,-soname,libcuda.so.1 "$stub/stub.c"
cargo build --release --features "$features"
strip "$root/target-cuda/release/card"
ls -la "$root/target-cuda/release/card"
# The invariant tests that take CARD_TEST_DEVICE, built for the GPU and stripped to carry.
mkdir -p "$root/target-cuda/device-tests"
cargo test --release --features "$features" --no-run --message-format=json --test model --test train --test decode \
    | "$venv/bin/python" -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])' \
    | while read -r name exe; do cp "$exe" "$root/target-cuda/device-tests/$name"; strip "$root/target-cuda/device-tests/$name"; done
ls -la "$root/target-cuda/device-tests"
# What the GPU machine gets: the binaries stripped are ~60-70 MB each (the kernels' PTX), over
# the device tool's 64 MiB carry limit together; xz brings them to ~30 MB in all.
mkdir -p "$root/target-cuda/carry"
xz -T0 -6 -c "$root/target-cuda/release/card" > "$root/target-cuda/carry/card.xz"
tar -C "$root/target-cuda" -cf - device-tests | xz -T0 -6 > "$root/target-cuda/carry/device-tests.tar.xz"
ls -la "$root/target-cuda/carry"
echo "run it with LD_LIBRARY_PATH=$cuda/lib (or the GPU machine's CUDA 13 libraries)"
