#!/usr/bin/env bash
# Named bench stages in one device call, each stopped at a shared hard deadline and packed into
# OUT/results.tgz as soon as it ends, so a call cut short still returns what finished.
#
#   bash core/bench/scripts/h200_stages.sh OUT_DIR HARD_S STAGE...
#
# The one script for GPU measurements (it replaced h200.sh and h200_session.sh, in git history).
# Stages (docs/benchmarks.md says which table each one fills):
#   smoke         tiny on the GPU, then one llama-1b step per system (does everything start?)
#   speed-1b      llama-1b: hf-reference, hf-compile, torch, jax; every setting its default
#   dropout-framework  llama-1b: torch and jax with framework dropout masks (speed-1b's rows have
#                 the portable ones: run both stages in one call, on one GPU, for the A/B)
#   speed-3b      llama-3b: hf-reference, torch, jax
#   ckpt-1b       llama-1b: torch and jax with gradient_checkpointing dots, then full
#   ckpt-8b       llama-8b: torch and jax with gradient_checkpointing full (the 24 GiB target)
#   gemma-1b      gemma3-1b: hf-reference, torch, jax
#   qwen-1b       qwen3-1.7b: hf-reference, torch, jax
#   packing       llama-1b on real-length rows (lognormal median 400): hf-reference pads each
#                 micro-batch, torch and jax pack
#   packing-exact packed vs unpacked loss on the GPU attention paths (core/bench/packing_check.py),
#                 tiny shape (head dim 16: cuDNN's path in bf16), real-length rows up to 512
#   scaling       (2 GPUs) llama-1b, torch and jax on 1 and 2 devices, data parallel, then fsdp
#   scaling-jax   (2 GPUs) the same, jax only
#   scaling-8b    (2 GPUs) llama-8b with its base weights sharded over 2 GPUs, torch and jax
#
# A dry run on a CPU: S1=tiny S8=tiny SG=tiny EXTRA="--batch_size 2 --seq_len 64" bash ... /tmp/x 600 speed-1b
set -uo pipefail
out=${1:?usage: $0 OUT_DIR HARD_S STAGE...}
hard=${2:?usage: $0 OUT_DIR HARD_S STAGE...}
shift 2
s1=${S1:-llama-1b} s8=${S8:-llama-8b} sg=${SG:-gemma3-1b} sq=${SQ:-qwen3-1.7b}
read -r -a extra <<< "${EXTRA:-}"
start=$SECONDS
work=$(mktemp -d)
source "$(dirname "$0")/_env.sh"  # the PYTHONPATH shim, LORASWITCH_CACHE, $py

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU"
  $py - <<'PY'
import sys, torch, transformers, peft, jax, flax, optax
print("python", sys.version.split()[0], "| torch", torch.__version__, "| transformers", transformers.__version__,
      "| peft", peft.__version__, "| jax", jax.__version__, "| flax", flax.__version__, "| optax", optax.__version__)
PY
} 2>&1 | tee "$work/versions.txt"

pack() { tar czf "$out/results.tgz" --exclude=compile-cache -C "$work" . ; }
hard_left() { local n=$(( hard - (SECONDS - start) )); echo $(( n > 5 ? n : 5 )); }
bench() {  # bench NAME ARGS...: one bench invocation; its table goes to stdout and summary.md
    local name=$1; shift
    if [ "$(hard_left)" -le 20 ]; then echo "=== skip $name: out of time"; return; fi
    echo "=== [$((SECONDS - start)) s] $name: loraswitch bench $*"
    timeout "$(hard_left)" $py -m loraswitch.core.cli bench --out "$work/$name" "$@" "${extra[@]}" > "$work/$name.log" 2>&1
    { echo "## $name"; echo; echo "loraswitch bench $*"; echo; cat "$work/$name/results.md" 2>/dev/null || tail -5 "$work/$name.log"; echo; } >> "$work/summary.md"
    grep -E "^│|^\|" "$work/$name.log" | head -12
    pack
}

for stage in "$@"; do
    case $stage in
        smoke)
            bench smoke-tiny --shape tiny --systems hf-reference,torch,jax --steps 2 --warmup_steps 1 --timeout_s 120
            bench smoke-1b --shape $s1 --systems hf-reference,torch,jax --steps 1 --warmup_steps 1 --timeout_s 200 ;;
        speed-1b) bench speed-1b --shape $s1 --systems hf-reference,hf-compile,torch,jax --steps 4 --warmup_steps 2 --timeout_s 300 ;;
        dropout-framework) bench dropout-framework --shape $s1 --systems torch,jax --dropout_masks framework --steps 4 --warmup_steps 2 --timeout_s 240 ;;
        speed-3b) bench speed-3b --shape ${S3:-llama-3b} --systems hf-reference,torch,jax --steps 3 --warmup_steps 2 --timeout_s 240 ;;
        ckpt-1b)
            bench ckpt-1b-dots --shape $s1 --systems torch,jax --gradient_checkpointing dots --steps 3 --warmup_steps 2 --timeout_s 200
            bench ckpt-1b-full --shape $s1 --systems torch,jax --gradient_checkpointing full --steps 3 --warmup_steps 2 --timeout_s 200 ;;
        ckpt-8b) bench ckpt-8b --shape $s8 --systems torch,jax --gradient_checkpointing full --steps 2 --warmup_steps 1 --timeout_s 300 ;;
        gemma-1b) bench gemma-1b --shape $sg --systems hf-reference,torch,jax --steps 3 --warmup_steps 2 --timeout_s 240 ;;
        qwen-1b) bench qwen-1b --shape $sq --systems hf-reference,torch,jax --steps 3 --warmup_steps 2 --timeout_s 240 ;;
        packing) bench packing --shape $s1 --systems hf-reference,torch,jax --lengths lognormal:400:0.9:32:2048 --steps 3 --warmup_steps 2 --timeout_s 300 ;;
        packing-exact)
            echo "=== [$((SECONDS - start)) s] packing-exact"
            timeout "$(hard_left)" $py -m loraswitch.core.bench.packing_check --shape tiny --seq_len 512 \
                --lengths lognormal:100:0.9:8:512 --json > "$work/packing-exact.log" 2>&1
            tail -20 "$work/packing-exact.log"; pack ;;
        scaling-jax)
            bench scaling-jax-data --shape $s1 --systems jax --devices 1,2 --mesh data --steps 3 --warmup_steps 2 --timeout_s 200
            bench scaling-jax-fsdp --shape $s1 --systems jax --devices 1,2 --mesh fsdp --steps 3 --warmup_steps 2 --timeout_s 200 ;;
        scaling)
            bench scaling-data --shape $s1 --systems torch,jax --devices 1,2 --mesh data --steps 3 --warmup_steps 2 --timeout_s 240
            bench scaling-fsdp --shape $s1 --systems torch,jax --devices 1,2 --mesh fsdp --steps 3 --warmup_steps 2 --timeout_s 240 ;;
        scaling-8b) bench scaling-8b --shape $s8 --systems torch,jax --devices 2 --mesh fsdp --steps 2 --warmup_steps 1 --timeout_s 300 ;;
        *) echo "unknown stage $stage" >&2 ;;
    esac
done
echo "=== done at $((SECONDS - start)) s"
cp "$work/summary.md" "$out/summary.md" 2>/dev/null
pack
