#!/usr/bin/env bash
# Diagnostic variants on llama-1b (see docs/bench/NOTES.md): what dropout, rematerialisation,
# the dropout PRNG, the loss chunk and a larger micro-batch change. Same shim (_env.sh) as h200.sh.
#
#   bash docs/bench/h200_ideas.sh OUT_DIR
set -uo pipefail
out=${1:-bench-results/ideas}
source "$(dirname "$0")/_env.sh"  # the PYTHONPATH shim, LORASWITCH_CACHE, $py

bench() {  # bench NAME ARGS...
    local name=$1; shift
    echo "=== $name: loraswitch bench $*"
    $py -m loraswitch.core.cli bench --shape llama-1b --steps 5 --warmup_steps 2 --timeout_s 200 --out "$out/$name" "$@" > "$out/$name.log" 2>&1
    grep -E "^│" "$out/$name.log"
}

bench jax-base --systems jax
bench dropout0 --systems hf-reference,torch,jax --lora_dropout 0
LORASWITCH_JAX_REMAT=dots bench jax-remat-dots --systems jax
LORASWITCH_JAX_PRNG=unsafe_rbg bench jax-unsafe-rbg --systems jax
LORASWITCH_JAX_LOSS_CHUNK=8192 bench jax-chunk-8192 --systems jax
bench jax-b8-a2 --systems jax,torch --batch_size 8 --accumulation_steps 2

# one JSON with every variant's report, for docs/bench/
merge_reports ideas.json
