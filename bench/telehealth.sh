#!/usr/bin/env bash
# Benchmark: telehealth launch handling and the historic status page (release build, SQLite).
# Targets: launch handling (decrypt + validate + conference lookup / create) p99 ≤ 20 ms excluding
# Epic's own round trips; historic status page with 10,000 conferences ≤ 200 ms.
#   bench/telehealth.sh [LAUNCHES]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
OUT_RAW=$(cargo run --release -q -p switchboard --example telehealth_bench -- "$N")
get() { awk -v k="$1" '$1 == k {print $2}' <<<"$OUT_RAW"; }
OUT="bench/results/telehealth-$(date -u +%Y-%m-%dT%H-%M-%SZ).md"
{
  echo "# Telehealth: launch handling and the historic status page"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- machine: $(nproc) cores, $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ //'), $(uname -sr)"
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- storage: SQLite (WAL, synchronous=FULL), release build, simulator on loopback"
  echo
  echo "| measure | p50 | p99 | target |"
  echo "|---|---|---|---|"
  echo "| launch: decrypt + validate + single use + pending state ($(get launches) launches) | $(get launch_p50_ms) ms | $(get launch_p99_ms) ms | p99 ≤ 20 ms |"
  echo "| redirect back: state + code exchange with the loopback simulator + conference lookup / create + participant | $(get join_p50_ms) ms | $(get join_p99_ms) ms | (includes Epic's round trip) |"
  echo "| historic conferences, API, first page of 50 (10,000 stored) | $(get api_first_page_p50_ms) ms | $(get api_first_page_p99_ms) ms | ≤ 200 ms |"
  echo "| historic conferences, API, search | $(get api_search_p50_ms) ms | $(get api_search_p99_ms) ms | ≤ 200 ms |"
  echo "| historic conferences, console page | $(get console_first_page_p50_ms) ms | $(get console_first_page_p99_ms) ms | ≤ 200 ms |"
  echo "| historic conferences, console search | $(get console_search_p50_ms) ms | $(get console_search_p99_ms) ms | ≤ 200 ms |"
  echo
  echo "No peer runs this workload (Pexip's status pages are not available here); figures are absolute."
} > "$OUT"
cat "$OUT"
