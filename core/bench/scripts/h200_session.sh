#!/usr/bin/env bash
# One lease, one call: the final H200 tables (llama-1b and llama-3b, hf-reference + torch + jax,
# exactly as `h200.sh full`), then A/B variants of the latest changes on llama-1b while time is
# left. Every stage re-packs what exists so far into OUT/results.tgz, so a call cut short still
# returns everything finished before the cut.
#
#   bash core/bench/scripts/h200_session.sh OUT_DIR [DEADLINE_S [HARD_S]]
#
# Variants start only before DEADLINE_S (default 500) seconds; every bench is stopped at HARD_S
# (default 550), to end inside one 10-minute device call. For a dry run of the script itself on
# a CPU: S1=tiny S3=tiny EXTRA="--batch_size 1 --seq_len 64" bash core/bench/scripts/h200_session.sh /tmp/x
#
# Fallbacks, so that one broken change cannot cost the table: if the torch row fails on llama-1b,
# torch runs again (and on llama-3b) with LORASWITCH_TORCH_ATTENTION=flash; if the jax row
# fails, jax runs again with LORASWITCH_JAX_FUSE=off.
set -uo pipefail
out=${1:?usage: $0 OUT_DIR [DEADLINE_S]}
deadline=${2:-500}
hard=${3:-550}
s1=${S1:-llama-1b} s3=${S3:-llama-3b}
read -r -a extra <<< "${EXTRA:-}"
start=$SECONDS
work=$(mktemp -d)
source "$(dirname "$0")/_env.sh"  # the PYTHONPATH shim, LORASWITCH_CACHE, $py

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $py - <<'PY'
import sys, torch, transformers, peft, jax, flax, optax
print("python", sys.version.split()[0], "| torch", torch.__version__, "| transformers", transformers.__version__,
      "| peft", peft.__version__, "| jax", jax.__version__, "| flax", flax.__version__, "| optax", optax.__version__)
PY
} 2>&1 | tee "$work/versions.txt"

pack() { tar czf "$out/results.tgz" -C "$work" . ; }
left() { echo $(( deadline - (SECONDS - start) )); }
hard_left() { local n=$(( hard - (SECONDS - start) )); echo $(( n > 10 ? n : 10 )); }
status_of() {  # status_of NAME SYSTEM -> ok | failed | missing
    $py - "$work/$1/results.json" "$2" <<'PY'
import json, sys
try:
    rows = {r["system"]: r for r in json.load(open(sys.argv[1]))["systems"]}
    print(rows.get(sys.argv[2], {}).get("status", "missing"))
except Exception:
    print("missing")
PY
}
bench() {  # bench NAME ARGS...: one bench invocation; its table goes to stdout and summary.md
    local name=$1; shift
    echo "=== [$((SECONDS - start)) s] $name: loraswitch bench $* $(env | grep -E '^(LORASWITCH_|XLA_FLAGS)' | tr '\n' ' ')"
    timeout "$(hard_left)" $py -m loraswitch.core.cli bench --out "$work/$name" "$@" "${extra[@]}" > "$work/$name.log" 2>&1
    { echo "## $name"; echo; echo "bench $*"; echo; cat "$work/$name/results.md" 2>/dev/null || tail -5 "$work/$name.log"; echo; } >> "$work/summary.md"
    grep -E "^│|^\|" "$work/$name.log" | head -8
    pack
}

# 1. the final tables
bench llama-1b --shape $s1 --systems hf-reference,torch,jax --steps 5 --warmup_steps 2 --timeout_s 240
if [ "$(status_of llama-1b torch)" != ok ]; then
    export LORASWITCH_TORCH_ATTENTION=flash
    bench llama-1b-torch-flash --shape $s1 --systems torch --steps 5 --warmup_steps 2 --timeout_s 200
fi
if [ "$(status_of llama-1b jax)" != ok ]; then
    export LORASWITCH_JAX_FUSE=off
    bench llama-1b-jax-unfused --shape $s1 --systems jax --steps 5 --warmup_steps 2 --timeout_s 120
fi
bench llama-3b --shape $s3 --systems hf-reference,torch,jax --steps 3 --warmup_steps 2 --timeout_s 300

# 2. A/B variants on llama-1b (3 timed steps), the most informative first, while time is left
variant() {  # variant NAME SECONDS_NEEDED ENV... -- ARGS...
    local name=$1 need=$2; shift 2
    local envs=()
    while [ "$1" != "--" ]; do envs+=("$1"); shift; done; shift
    if [ "$(left)" -lt "$need" ]; then echo "=== skip $name: $(left) s left, needs $need"; return; fi
    ( export "${envs[@]}"; bench "$name" --shape $s1 --steps 3 --warmup_steps 2 --timeout_s 150 "$@" )
}
variant ab-jax-unfused 35 LORASWITCH_JAX_FUSE=off -- --systems jax
variant ab-jax-no-triton-gemm 35 XLA_FLAGS=--xla_gpu_enable_triton_gemm=false -- --systems jax
variant ab-torch-flash 60 LORASWITCH_TORCH_ATTENTION=flash -- --systems torch
variant ab-jax-remat-none 35 LORASWITCH_JAX_REMAT=none -- --systems jax
echo "=== done at $((SECONDS - start)) s"
cp "$work/summary.md" "$out/summary.md" 2>/dev/null
pack
