#!/usr/bin/env bash
# Reproduce the H200 table of docs/benchmarks.md from a checkout that is not pip-installed
# (as on a lent GPU machine: its python3 already has torch, transformers, peft, jax and flax).
#
#   bash core/bench/scripts/h200.sh smoke OUT_DIR   # tiny on the GPU + one llama-1b step per system
#   bash core/bench/scripts/h200.sh full  OUT_DIR   # llama-1b and llama-3b, hf-reference + torch + jax
#   bash core/bench/scripts/h200.sh dropout OUT_DIR # llama-1b, torch + jax, portable then framework dropout masks
#   bash core/bench/scripts/h200.sh dropout-portable OUT_DIR   # ... one of the two (one device call each)
#   bash core/bench/scripts/h200.sh packing-check OUT_DIR      # packed vs unpacked loss on the GPU kernels, bf16 + fp32
#   bash core/bench/scripts/h200.sh real-length OUT_DIR        # llama-1b on real-length examples: hf pads, backends pack
#
# `import loraswitch.core` works through the shim that _env.sh sets up.
set -uo pipefail
mode=${1:-full}
out=${2:-bench-results/h200}
source "$(dirname "$0")/_env.sh"  # the PYTHONPATH shim, LORASWITCH_CACHE, $py

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$py - <<'PY'
import sys, torch, transformers, peft, jax, flax, optax
print("python", sys.version.split()[0], "| torch", torch.__version__, "| transformers", transformers.__version__,
      "| peft", peft.__version__, "| jax", jax.__version__, "| flax", flax.__version__, "| optax", optax.__version__)
print("torch sees", torch.cuda.get_device_name(), "| jax sees", jax.devices())
PY

bench() {  # bench NAME ARGS...: one bench invocation, its log beside its report
    local name=$1; shift
    echo "=== loraswitch bench $* (report: $out/$name)"
    $py -m loraswitch.core.cli bench --out "$out/$name" "$@" 2>&1 | tee "$out/$name.log"
}

systems=hf-reference,torch,jax
case $mode in
    smoke)
        bench tiny --shape tiny --systems $systems --batch_size 2 --seq_len 128 --steps 2 --warmup_steps 1 --timeout_s 120
        bench smoke-1b --shape llama-1b --systems $systems --steps 1 --warmup_steps 1 --timeout_s 200
        ;;
    full)
        bench llama-1b --shape llama-1b --systems $systems --steps 5 --warmup_steps 2 --timeout_s 240
        bench llama-3b --shape llama-3b --systems $systems --steps 3 --warmup_steps 2 --timeout_s 300
        ;;
    dropout|dropout-portable|dropout-framework)
        # docs/benchmarks.md, "Portable dropout: cost": the same job twice, only the masks differ
        [ "$mode" = dropout ] && masks_list="portable framework" || masks_list=${mode#dropout-}
        for masks in $masks_list; do
            bench dropout-$masks --shape llama-1b --systems torch,jax --steps 5 --warmup_steps 2 \
                --dropout_masks $masks --timeout_s 240
        done
        ;;
    packing-check)
        # docs/packing.md, "Checked on the GPU": one step packed and unpacked from the same adapter, per backend
        echo "=== packing check (tiny, then llama-1b)"
        $py -m loraswitch.core.bench.packing_check --shape tiny --seq_len 512 --lengths lognormal:100:0.9:16:512 --json \
            2>&1 | tee "$out/packing-check-tiny.log"
        $py -m loraswitch.core.bench.packing_check --shape llama-1b --json 2>&1 | tee "$out/packing-check-1b.log"
        ;;
    real-length)
        # docs/benchmarks.md, "Real-length mode": the issue-15 anchor job (median 400, sigma 0.9, [32, 2048])
        bench real-length-1b --shape llama-1b --systems $systems --lengths lognormal:400:0.9:32:2048 \
            --steps 5 --warmup_steps 3 --timeout_s 300
        ;;
    *) echo "usage: $0 smoke|full|dropout|dropout-portable|dropout-framework|packing-check|real-length OUT_DIR" >&2; exit 2 ;;
esac
