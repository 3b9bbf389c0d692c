#!/usr/bin/env bash
# Run every multi-process test (pytest -m multiprocess: torchrun / mp.spawn ranks on gloo) N times in a row and
# report each round, to catch flaky launches, port races and teardown aborts that one run does not show.
#
#   bash scripts/repeat_multiprocess.sh [N=20] [--load] [--log FILE]
#
# --load keeps both cores busy meanwhile (two single-threaded matmul loops), as another job on the machine would.
# Every round's pytest output goes to FILE (default runs/repeat_multiprocess.log); one line per round and a total
# are printed. Exit status: 0 when every round passed, 1 otherwise (all rounds still run).
set -uo pipefail
cd "$(dirname "$0")/.."
N=20 LOAD=0 LOG=runs/repeat_multiprocess.log
while [ $# -gt 0 ]; do
  case "$1" in
    --load) LOAD=1 ;;
    --log) LOG="$2"; shift ;;
    [0-9]*) N="$1" ;;
    *) echo "usage: $0 [N] [--load] [--log FILE]" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$(dirname "$LOG")"
: > "$LOG"
PY=.venv/bin/python
LOADERS=()
if [ "$LOAD" = 1 ]; then
  for _ in 1 2; do
    OMP_NUM_THREADS=1 "$PY" -c 'import torch
torch.set_num_threads(1)
a = torch.randn(512, 512)
while True:
    a = torch.tanh(a @ a)' &
    LOADERS+=($!)
  done
  trap 'kill "${LOADERS[@]}" 2>/dev/null' EXIT
fi
failed=0
for i in $(seq 1 "$N"); do
  start=$(date +%s) loadavg=$(cut -d' ' -f1 /proc/loadavg)
  echo "=== round $i $(date -u +%FT%TZ)" >> "$LOG"
  "$PY" -m pytest -q -p no:cacheprovider -m multiprocess tests >> "$LOG" 2>&1
  rc=$?
  summary=$(grep -E "passed|failed|error" "$LOG" | tail -1)
  echo "round $i/$N: exit $rc, $(( $(date +%s) - start )) s, --load $([ "$LOAD" = 1 ] && echo on || echo off), load average $loadavg at start: $summary"
  [ "$rc" = 0 ] || failed=$((failed + 1))
done
echo "$((N - failed))/$N rounds passed (log: $LOG)"
[ "$failed" = 0 ]
