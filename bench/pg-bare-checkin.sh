#!/usr/bin/env bash
# Reference for the shift-change bench: what PostgreSQL on this machine does with a bare
# check-in-plus-enqueue transaction and nothing else running (no HTTP, no audit, no agents, no
# simulator): lock the device row, end the check-out, insert the check-in, update the device and
# enqueue two logout jobs, on Switchboard's own schema, 64 clients (pgbench, prepared statements).
#   bench/pg-bare-checkin.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
DB=sbbench_bare_$$
psql "$PG/postgres" -qAt -c "CREATE DATABASE $DB"
trap 'psql "$PG/postgres" -qAt -c "DROP DATABASE IF EXISTS $DB" >/dev/null' EXIT
for f in migrations/postgres/*.sql; do psql "$PG/$DB" -qAt -v ON_ERROR_STOP=1 -f "$f" >/dev/null; done
psql "$PG/$DB" -qAt -v ON_ERROR_STOP=1 <<'SQL'
INSERT INTO devices (id, serial, platform, name, group_id, credential_digest, status, apps, appconfig,
                     readiness, enrolled_at, created_at, updated_at)
SELECT 'd' || i, 'S' || i, 'ios', 'S' || i, 'g1', 'c' || i, 'checked_out', '[]', '{}', '[]', 1, 1, 1
FROM generate_series(1, 2000) AS i;
VACUUM ANALYZE;
SQL
SCRIPT=$(mktemp)
cat > "$SCRIPT" <<'SQL'
\set n random(1, 2000)
BEGIN;
SELECT status FROM devices WHERE id = 'd' || :n FOR UPDATE;
UPDATE checkouts SET ended_at = 2 WHERE id = 'none' AND ended_at IS NULL;
INSERT INTO checkins (id, device_id, checkout_id, user_id, requested_by, status, warnings, started_at)
  VALUES (gen_random_uuid()::text, 'd' || :n, gen_random_uuid()::text, 'u1', 'api', 'in_progress', '[]', 2);
UPDATE devices SET status = 'returning', holder_id = NULL, checkout_id = NULL, updated_at = 2 WHERE id = 'd' || :n;
INSERT INTO jobs (kind, payload, state, run_at, max_attempts, created_at, updated_at)
  VALUES ('epic.logout', '{"app":"Rover"}', 'queued', 2, 5, 2, 2), ('epic.logout', '{"app":"Haiku"}', 'queued', 2, 5, 2, 2);
END;
SQL
OUT="bench/results/pg-bare-checkin-$(date -u +%Y-%m-%dT%H-%M-%SZ).md"
RES=$(pgbench "$PG/$DB" -n -M prepared -c 64 -j 2 -T "$SECS" -f "$SCRIPT" 2>&1)
rm -f "$SCRIPT"
{
  echo "# Bare PostgreSQL check-in-plus-enqueue transaction (pgbench, 64 clients, ${SECS} s)"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- machine: $(nproc) cores, $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ //'), $(uname -sr)"
  echo "- PostgreSQL $(psql "$PG/postgres" -qAt -c 'SHOW server_version'), synchronous_commit=$(psql "$PG/postgres" -qAt -c 'SHOW synchronous_commit')"
  echo "- per transaction: BEGIN, device row lock, end check-out, insert check-in, update device, enqueue 2 jobs, COMMIT"
  echo
  echo '```'
  grep -E "tps|latency|transactions actually" <<<"$RES"
  echo '```'
} > "$OUT"
cat "$OUT"
