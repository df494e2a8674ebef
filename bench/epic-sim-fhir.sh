#!/usr/bin/env bash
# Benchmark: simple FHIR reads against `switchboard epic-sim` on loopback (target ≥ 20,000/s on a
# 2-core machine), with wrk. The direct nginx static upstream from shared/bench runs alongside as
# the reference for what this machine can do. Results go to bench/results/.
#   bench/epic-sim-fhir.sh [DURATION_SECONDS] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}; RUNS=${2:-3}; CONN=32; PORT=19090
command -v wrk >/dev/null || { echo "needs wrk (apt-get install -y wrk)"; exit 1; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p switchboard
BIN="$CARGO_TARGET_DIR/release/switchboard"
CFG=$(mktemp --suffix=.json)
cat > "$CFG" <<JSON
{"clients": [{"client_id": "bench", "apis": ["*"]}], "journal_capacity": 1000}
JSON
"$BIN" epic-sim --listen 127.0.0.1:$PORT --sim-config "$CFG" > /dev/null 2>&1 &
SIM=$!
trap 'kill $SIM 2>/dev/null; [ -n "${PEER:-}" ] && ../shared/bench/nginx-peer/stop "$PEER" >/dev/null 2>&1; rm -f "$CFG"' EXIT
for _ in $(seq 1 50); do curl -fs -o /dev/null "http://127.0.0.1:$PORT/_sim/clients" && break; sleep 0.1; done
TOKEN=$(curl -fs -X POST -H 'content-type: application/json' -d '{"client_id":"bench","instance":"interconnect-tst"}' "http://127.0.0.1:$PORT/_sim/tokens" | sed -E 's/.*"access_token":"([^"]+)".*/\1/')
PATIENT=$(curl -fs "http://127.0.0.1:$PORT/_sim/data/Patient" | sed -E 's/^\["([^"]+)".*/\1/')
URL="http://127.0.0.1:$PORT/interconnect-tst-oauth/api/FHIR/R4/Patient/$PATIENT"
curl -fs -o /dev/null -H "Authorization: Bearer $TOKEN" "$URL"
PEER=""
if command -v nginx >/dev/null && [ -x ../shared/bench/nginx-peer/start ]; then
  PEER=$(../shared/bench/nginx-peer/start 18081 18082 2>/dev/null | tail -n 1) || PEER=""
fi
# Requests/s of one wrk run; aborts if any answer was not 2xx (a fast error is not a result).
rate() {
  local out; out=$(wrk -t1 -c$CONN -d${DUR}s "$@")
  if grep -q "Non-2xx" <<<"$out"; then echo "non-2xx answers during the run:" >&2; echo "$out" >&2; exit 1; fi
  awk '/Requests\/sec/ {print $2}' <<<"$out"
}
sim_rates=(); direct_rates=()
for i in $(seq 1 "$RUNS"); do
  [ -n "$PEER" ] && direct_rates+=("$(rate http://127.0.0.1:18081/fhir/Patient/123)")
  sim_rates+=("$(rate -H "Authorization: Bearer $TOKEN" "$URL")")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : "n/a")}'; }
SIM_MED=$(median "${sim_rates[@]}")
DIRECT_MED=$( [ ${#direct_rates[@]} -gt 0 ] && median "${direct_rates[@]}" || echo n/a )
STAMP=$(date -u +%Y-%m-%dT%H-%M-%SZ)
OUT="bench/results/epic-sim-fhir-$STAMP.md"
{
  echo "# Epic simulator: FHIR Patient read (wrk -t1 -c$CONN -d${DUR}s, $RUNS runs)"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- machine: $(nproc) cores, $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ //'), $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr)"
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo
  echo "| target | runs (req/s) | median req/s |"
  echo "|---|---|---|"
  echo "| epic-sim (token check, journal on) | ${sim_rates[*]} | $SIM_MED |"
  echo "| nginx static upstream (direct, reference) | ${direct_rates[*]:-n/a} | $DIRECT_MED |"
  echo
  echo "Target: ≥ 20,000 req/s for the simulator. The simulator and wrk share the 2 cores."
} > "$OUT"
cat "$OUT"
