#!/usr/bin/env bash
# Benchmark: a 2 KB FHIR read through Switchboard's gateway (token check, activation and scope
# check, URL rewriting on, access record per request) versus the same upstream behind nginx as a
# plain reverse proxy (shared/bench/nginx-peer), alternating runs in one session; the added p50
# latency over a direct call; and the token endpoint's rate. Results go to bench/results/.
# Goals: throughput >= 1.0x nginx, added p50 <= 0.2 ms, >= 5,000 tokens/s.
#   bench/gateway.sh [DURATION_SECONDS] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}; RUNS=${2:-3}; CONN=32; PORT=18090
command -v wrk >/dev/null && command -v nginx >/dev/null || { echo "needs wrk and nginx (apt-get install -y wrk nginx)"; exit 1; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p switchboard
BIN="$CARGO_TARGET_DIR/release/switchboard"
DATA=$(mktemp -d)
PEER=$(../shared/bench/nginx-peer/start 18081 18082 | tail -n 1)
SWITCHBOARD_LISTEN=127.0.0.1:$PORT SWITCHBOARD_DATA_DIR="$DATA" SWITCHBOARD_LOG_LEVEL=warn "$BIN" serve > "$DATA/server.log" 2>&1 &
SB=$!
trap 'kill $SB 2>/dev/null; ../shared/bench/nginx-peer/stop "$PEER" >/dev/null 2>&1; rm -rf "$DATA"' EXIT
for _ in $(seq 1 100); do curl -fs -o /dev/null "http://127.0.0.1:$PORT/readyz" && break; sleep 0.1; done
ADMIN=$(cat "$DATA/bootstrap-admin-token")
api() { curl -fs -H "Authorization: Bearer $ADMIN" -H 'content-type: application/json' -d "$2" "http://127.0.0.1:$PORT/admin/api/v1$1"; }
id_of() { sed -E 's/^\{"id":"([^"]+)".*/\1/'; }
ADAPTER=$(api /gateway/adapters '{"name":"peer","settings":{"epicR4Endpoint":"http://127.0.0.1:18081/fhir","useStagingEnvironment":true}}' | id_of)
GATEWAY=$(api /gateway/gateways "{\"name\":\"bench\",\"adapter_id\":\"$ADAPTER\"}" | id_of)
APP_JSON=$(api /gateway/apps '{"name":"bench","scopes":"system/Patient.read"}')
APP=$(sed -E 's/.*"app":\{"id":"([^"]+)".*/\1/' <<<"$APP_JSON")
CLIENT=$(sed -E 's/.*"client_id":"([^"]+)".*/\1/' <<<"$APP_JSON")
SECRET=$(sed -E 's/.*"client_secret":"([^"]+)".*/\1/' <<<"$APP_JSON")
api /gateway/activations "{\"app_id\":\"$APP\",\"gateway_id\":\"$GATEWAY\",\"ehr_auth\":\"none\"}" > /dev/null
TOKEN=$(curl -fs -X POST -u "$CLIENT:$SECRET" "http://127.0.0.1:$PORT/auth/token?grant_type=client_credentials" | sed -E 's/.*"access_token":"([^"]+)".*/\1/')
GW="http://127.0.0.1:$PORT/gateways/bench/fhir/R4/Patient/123"
curl -fs -o /dev/null -H "Authorization: Bearer $TOKEN" "$GW"
rate() {
  local out; out=$(wrk -t1 -c$CONN -d${DUR}s "$@")
  if grep -q "Non-2xx" <<<"$out"; then echo "non-2xx answers during the run:" >&2; echo "$out" >&2; exit 1; fi
  awk '/Requests\/sec/ {print $2}' <<<"$out"
}
p50() {
  wrk -t1 -c1 -d5s --latency "$@" | awk '$1 == "50%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v); print v} else {sub(/s/,"",v); print v*1000}}'
}
direct=(); nginx=(); gateway=()
for i in $(seq 1 "$RUNS"); do
  direct+=("$(rate http://127.0.0.1:18081/fhir/Patient/123)")
  nginx+=("$(rate http://127.0.0.1:18082/fhir/Patient/123)")
  gateway+=("$(rate -H "Authorization: Bearer $TOKEN" "$GW")")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : "n/a")}'; }
D=$(median "${direct[@]}"); N=$(median "${nginx[@]}"); G=$(median "${gateway[@]}")
LD=$(p50 http://127.0.0.1:18081/fhir/Patient/123)
LN=$(p50 http://127.0.0.1:18082/fhir/Patient/123)
LG=$(p50 -H "Authorization: Bearer $TOKEN" "$GW")
LUA=$(mktemp --suffix=.lua)
printf 'wrk.method = "POST"\nwrk.headers["Authorization"] = "Basic %s"\n' "$(printf '%s:%s' "$CLIENT" "$SECRET" | base64 -w0)" > "$LUA"
TOK=$(rate -s "$LUA" "http://127.0.0.1:$PORT/auth/token?grant_type=client_credentials")
rm -f "$LUA"
RSS=$(awk '/VmHWM/ {print $2/1024}' /proc/$SB/status)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }
OUT="bench/results/gateway-$(date -u +%Y-%m-%dT%H-%M-%SZ).md"
{
  echo "# FHIR gateway vs nginx reverse proxy: 2 KB Patient read (wrk -t1 -c$CONN -d${DUR}s, $RUNS alternating runs)"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- machine: $(nproc) cores, $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ //'), $(uname -sr)"
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown); release build; SQLite; wrk, nginx and Switchboard share the cores"
  echo "- gateway path: token signature + expiry + revocation list, app and activation snapshot, scope check, upstream keepalive pool, URL rewriting of the JSON body, one access record per request"
  echo
  echo "| target | runs (req/s) | median req/s | vs nginx |"
  echo "|---|---|---|---|"
  echo "| direct upstream | ${direct[*]} | $D | $(ratio "$D" "$N")x |"
  echo "| nginx reverse proxy (keepalive upstream) | ${nginx[*]} | $N | 1.00x |"
  echo "| Switchboard gateway | ${gateway[*]} | $G | **$(ratio "$G" "$N")x** |"
  echo
  echo "| latency, one connection (wrk -c1 --latency) | p50 |"
  echo "|---|---|"
  echo "| direct | $LD ms |"
  echo "| nginx | $LN ms (+$(awk -v a="$LN" -v b="$LD" 'BEGIN {printf "%.3f", a-b}') ms) |"
  echo "| gateway | $LG ms (+$(awk -v a="$LG" -v b="$LD" 'BEGIN {printf "%.3f", a-b}') ms over direct; goal <= 0.2 ms) |"
  echo
  echo "| token endpoint (client_credentials, HTTP Basic, wrk -c$CONN) | $TOK tokens/s (goal >= 5,000) |"
  echo "|---|---|"
  echo "| peak RSS of the Switchboard process | ${RSS} MiB |"
} > "$OUT"
cat "$OUT"
