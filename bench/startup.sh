#!/usr/bin/env bash
# Benchmark: time from `switchboard serve` starting to /readyz answering 200, on a fresh data
# folder (first start: creates the database, runs migrations, creates the master key and the
# admin) and on a warm one (restart). Target: under 1 s. Results go to bench/results/.
#   bench/startup.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}; PORT=18180
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p switchboard
BIN="$CARGO_TARGET_DIR/release/switchboard"
ms() { date +%s%N | awk '{printf "%d", $1/1000000}'; }
measure() {
  local dir=$1 start end pid
  start=$(ms)
  SWITCHBOARD_DATA_DIR="$dir" SWITCHBOARD_LISTEN=127.0.0.1:$PORT "$BIN" serve >/dev/null 2>&1 &
  pid=$!
  until curl -fs -o /dev/null "http://127.0.0.1:$PORT/readyz"; do sleep 0.005; done
  end=$(ms)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo $((end - start))
}
cold=(); warm=()
for _ in $(seq 1 "$RUNS"); do
  d=$(mktemp -d)
  cold+=("$(measure "$d")")
  warm+=("$(measure "$d")")
  rm -rf "$d"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
OUT="bench/results/startup-$(date -u +%Y-%m-%dT%H-%M-%SZ).md"
{
  echo "# Startup to ready (SQLite, release build, $RUNS runs)"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- machine: $(nproc) cores, $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ //'), $(uname -sr)"
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo
  echo "| start | runs (ms) | median ms |"
  echo "|---|---|---|"
  echo "| first start (create database, migrate, master key, admin) | ${cold[*]} | $(median "${cold[@]}") |"
  echo "| restart | ${warm[*]} | $(median "${warm[@]}") |"
  echo
  echo "Target: under 1000 ms. Measured from process start to the first 200 from /readyz."
} > "$OUT"
cat "$OUT"
