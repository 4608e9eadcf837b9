#!/usr/bin/env bash
# The A/B variants that the 2026-11-29 session (h200_session.sh) ran out of time for, on
# llama-1b, 3 timed steps after 2 warm-up; about 4 minutes on a fresh machine (the torch one
# compiles cold). NOTES.md, "Run 2", says what each is predicted to give.
#
#   bash docs/bench/h200_next.sh OUT_DIR
set -uo pipefail
out=${1:-bench-results/next}
source "$(dirname "$0")/_env.sh"  # the PYTHONPATH shim, LORASWITCH_CACHE, $py

bench() {  # bench NAME ARGS...
    local name=$1; shift
    echo "=== $name: loraswitch bench $* $(env | grep -E '^(LORASWITCH_JAX|LORASWITCH_TORCH|XLA_FLAGS)' | tr '\n' ' ')"
    $py -m loraswitch.core.cli bench --shape llama-1b --steps 3 --warmup_steps 2 --timeout_s 200 --out "$out/$name" "$@" > "$out/$name.log" 2>&1
    grep -E "^│" "$out/$name.log"
}

bench jax-default --systems jax                                         # the table's configuration
LORASWITCH_JAX_REMAT=dots+fused bench jax-dots-fused --systems jax      # keep the fused products
LORASWITCH_JAX_FUSE=off bench jax-unfused --systems jax                 # what the fusion gave
XLA_FLAGS=--xla_gpu_enable_triton_gemm=false bench jax-no-triton-gemm --systems jax
LORASWITCH_TORCH_ATTENTION=flash bench torch-flash --systems torch      # what cuDNN attention gave

merge_reports next.json
