#!/usr/bin/env bash
# Mutation testing with cosmic-ray (make mutation): each module below is mutated in place, one
# mutant at a time, and the fast tests that cover it run against each mutant; a mutant those
# tests do not fail "survives". cosmic-ray restores the file after every mutant (do not run other
# tests meanwhile, and do not interrupt it: an interrupted run can leave a mutant in place, which
# `git status` shows). Results: build/mutation/NAME.sqlite, summarised by cr-report.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=build/mutation
mkdir -p "$OUT"

session() { # name module test-args...
  local name=$1 module=$2
  shift 2
  cat > "$OUT/$name.toml" <<EOT
[cosmic-ray]
module-path = "$module"
timeout = 60.0
excluded-modules = []
test-command = "$BIN/python -m pytest -x -q -p no:cacheprovider $*"

[cosmic-ray.distributor]
name = "local"
EOT
  rm -f "$OUT/$name.sqlite"
  "$BIN/cosmic-ray" init "$OUT/$name.toml" "$OUT/$name.sqlite"
  "$BIN/cosmic-ray" exec "$OUT/$name.toml" "$OUT/$name.sqlite"
  "$BIN/cr-report" "$OUT/$name.sqlite" | tail -3
}

session stopping core/training/stopping.py "tests/core/training/test_properties.py -k first_of"
session evaluation core/training/evaluation.py tests/core/training/test_evaluation.py
session schedule core/training/schedule.py tests/core/training/test_schedule.py
session batching core/data/batching.py tests/core/data/test_batching.py
git diff --quiet -- core || { echo "a mutant was left in core/: git checkout core" >&2; exit 1; }
