#!/usr/bin/env bash
# Benchmark: client-assertion signing rate (RS384, ES384), cached-token lookup cost, and the cache
# hit rate of a steady stream of Epic calls with 2-second tokens against the simulator.
# Targets: ≥ 99.9 % of calls served from the cache. Results go to bench/results/.
#   bench/epic-auth.sh [SECONDS_PER_PHASE]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
OUT_RAW=$(cargo run --release -q -p switchboard-epic --example auth_bench -- "$SECS")
get() { awk -v k="$1" '$1 == k {print $2}' <<<"$OUT_RAW"; }
OUT="bench/results/epic-auth-$(date -u +%Y-%m-%dT%H-%M-%SZ).md"
{
  echo "# Epic backend OAuth: signing, cached lookups, cache hit rate"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- machine: $(nproc) cores, $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ //'), $(uname -sr)"
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo
  echo "| measure | value | reference |"
  echo "|---|---|---|"
  echo "| RS384 assertions signed per second (one core, key parsed once) | $(get rs384_signatures_per_sec) | aws-lc-rs RS384 ≈ 4,400/s (shared/bench) |"
  echo "| ES384 assertions signed per second | $(get es384_signatures_per_sec) | aws-lc-rs P-384 ≈ 1,800–15,700/s (shared/bench, style.md) |"
  echo "| cached-token lookup | $(get cached_lookup_ns) ns | |"
  echo "| steady stream: calls / token fetches (2 s tokens) | $(get stream_calls) / $(get stream_token_fetches) | |"
  echo "| calls served from the cache | $(get stream_cache_hit_percent) % | target ≥ 99.9 % |"
} > "$OUT"
cat "$OUT"
