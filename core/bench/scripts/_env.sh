# Sourced by the core/bench/scripts/*.sh scripts (set `out` first): makes `import loraswitch.core`
# work from a checkout that is not pip-installed, as on a lent GPU machine whose python3 already
# has torch, transformers, peft, jax and flax. A temporary folder holds loraswitch/{core,backends,plugins}
# as links into this checkout (loraswitch is a namespace package, so no __init__ is needed).
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
shim=$(mktemp -d)
mkdir -p "$shim/loraswitch" "${out:?set out before sourcing _env.sh}"
for d in core backends plugins; do ln -s "$repo/$d" "$shim/loraswitch/$d"; done
export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export LORASWITCH_CACHE=${LORASWITCH_CACHE:-/tmp/loraswitch-cache}
py=${PYTHON:-python3}

merge_reports() {  # merge_reports NAME: every $out/*/results.json in one $out/NAME, for docs/bench/ (results)
    $py - "$out" "$1" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
reports = {p.parent.name: json.loads(p.read_text()) for p in sorted(out.glob("*/results.json"))}
(out / sys.argv[2]).write_text(json.dumps(reports, indent=1) + "\n")
PY
}
