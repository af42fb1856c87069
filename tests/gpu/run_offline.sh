#!/usr/bin/env bash
# The GPU suite and the GPU gateway benchmark on a GPU machine with no network.
#   tests/gpu/run_offline.sh install PIECES_DIR WHEELS_DIR   # once: vLLM, Ray, raylm's deps
#   tests/gpu/run_offline.sh suite TOKENIZER_DIR OUT_DIR [pytest args (default: tests/gpu)]
#   tests/gpu/run_offline.sh bench TOKENIZER_DIR OUT_DIR [bench args, e.g. --rounds 2]
#   tests/gpu/run_offline.sh routing TOKENIZER_DIR OUT_DIR [bench_routing args]
# PIECES_DIR holds the .gpuNN folders of ../shared/gpu/make-pieces.sh, WHEELS_DIR the
# wheels of tests/gpu/wheels.txt; TOKENIZER_DIR the demo model's tokenizer files.
set -euo pipefail
cd "$(dirname "$0")/../.."
# Two --target dirs: a second `pip install --target` with --upgrade would replace the first's bin/.
export PYTHONPATH=/tmp/site:/tmp/site2:$PWD/src:$PWD:${PYTHONPATH:-} PATH=/tmp/site/bin:/tmp/site2/bin:$PATH
# NVLink multicast stays off on shared multi-GPU hosts (docs/gpu-testing.md).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
case "$1" in
install)
  mkdir -p /tmp/parts && cp "$2"/.gpu*/core.tar.part-* /tmp/parts/ 2>/dev/null || true
  bash "$(ls -d "$2"/.gpu* | tail -1)/install.sh"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site2 "$3"/*.whl
  python3 -c "import vllm, ray, typer, uvloop, pynvml, pytest; print('vllm', vllm.__version__, 'ray', ray.__version__)"
  ;;
suite)
  export RAYLM_GPU_TOKENIZER=$2; out=$(mkdir -p "$3" && cd "$3" && pwd); shift 3
  nvidia-smi -L
  python3 -m pytest -p no:cacheprovider -ra -s --junitxml="$out/junit.xml" "${@:-tests/gpu}"
  ;;
bench)
  export RAYLM_GPU_TOKENIZER=$2; out=$3; mkdir -p "$out"; shift 3
  python3 - "$RAYLM_GPU_TOKENIZER" "$out/tiny-llama" <<'PY'
import sys
from pathlib import Path
from tests.gpu.harness import build_tiny_model
build_tiny_model(Path(sys.argv[2]))
PY
  python3 benchmarks/bench_gateway_gpu.py --model "$out/tiny-llama" --out "$out/bench_gateway_gpu.json" "$@"
  ;;
routing)
  # bench_routing on a GPU: two replicas of Llama-3-8B's shape with random weights
  # (vLLM's dummy load), each KV cache holding ~5.8k tokens, as on CPU.
  export RAYLM_GPU_TOKENIZER=$2; out=$3; mkdir -p "$out"; shift 3
  python3 - "$out/llama-8b-shape" <<'PY'
import sys
from pathlib import Path
from tests.gpu.harness import build_config_model
build_config_model(Path(sys.argv[1]), Path("tests/gpu/llama-3-8b-config.json"))
PY
  python3 benchmarks/bench_routing.py --device gpu --model "$out/llama-8b-shape" --dummy-weights \
    --kv-cache-bytes $((760 << 20)) --out "$out/bench_routing_gpu.json" "$@"
  ;;
*) echo "usage: $0 install|suite|bench|routing ..." >&2; exit 2 ;;
esac
