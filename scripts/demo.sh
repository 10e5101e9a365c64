#!/usr/bin/env bash
# `just demo`: the README's showcase. Starts the mesh if it is not running, creates a few
# tenants with keelctl, waits for them to become ACTIVE (provisioned for real: schema and role,
# JetStream bucket, Redis quotas, GitOps manifests, license), records usage for one and shows
# its usage and estimated cost, changes one tier, suspends one, and shows each tenant's timeline
# and one full trace from create to ACTIVE.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
KEELCTL="$TARGET/debug/keelctl"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# The mesh runs TLS with the local CA `just up` made in .keel/tls (plaintext only with
# KEEL_TLS_INSECURE=true).
if [ "${KEEL_TLS_INSECURE:-}" = "true" ]; then
  ready() { curl -fsS "http://127.0.0.1:$1/readyz" >/dev/null 2>&1; }
else
  ready() { [ -s .keel/tls/ca.pem ] && curl -fsS --cacert .keel/tls/ca.pem "https://127.0.0.1:$1/readyz" >/dev/null 2>&1; }
fi

if ready 8081 && ready 8082 && ready 8083 && ready 8084; then
  say "mesh already running"
else
  say "starting the mesh (logs: .keel/mesh.log)"
  mkdir -p .keel
  nohup just up >.keel/mesh.log 2>&1 &
  for i in $(seq 1 600); do
    if ready 8081 && ready 8082 && ready 8083 && ready 8084; then break; fi
    if [ "$i" -eq 600 ]; then echo "mesh did not become ready; see .keel/mesh.log" >&2; exit 1; fi
    sleep 1
  done
fi
[ -x "$KEELCTL" ] || cargo build --bin keelctl
if [ -z "${KEEL_API_KEY:-}${KEEL_TOKEN:-}" ]; then
  [ -s .keel/bootstrap-token ] && export KEEL_API_KEY="$(cat .keel/bootstrap-token)"
fi

run() { printf '$ keelctl %s\n' "$*"; "$KEELCTL" "$@"; }
suffix="$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')"
tenants=("acme-$suffix" "globex-$suffix" "initech-$suffix")
tiers=(mid low high)

say "creating tenants"
for i in 0 1 2; do
  run tenant create --name "${tenants[$i]%-*}" --slug "${tenants[$i]}" --tier "${tiers[$i]}" --owner-email "owner@${tenants[$i]}.example"
done

say "waiting for provisioning (PENDING → PROVISIONING → ACTIVE)"
for t in "${tenants[@]}"; do
  for i in $(seq 1 120); do
    status="$("$KEELCTL" tenant show "$t" --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')"
    [ "$status" = "active" ] && break
    [ "$status" = "failed" ] && { echo "$t failed to provision" >&2; exit 1; }
    sleep 0.5
  done
  echo "$t: $status"
done
run tenant list

say "usage of ${tenants[0]} (billing meter)"
# A collector's batch: CloudEvents as on keel.usage.<tenant>, over the last two hours.
usage_file="$(mktemp)"
trap 'rm -f "$usage_file"' EXIT
python3 - "$usage_file" "$suffix" <<'PY'
import datetime, json, sys
now = datetime.datetime.now(datetime.timezone.utc)
at = lambda minutes: (now - datetime.timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")
events = [
    ("api_requests", "1200", 95), ("api_requests", "800", 35), ("api_requests", "450", 5),
    ("data_volume_bytes", "2500000000", 60), ("cpu_core_seconds", "14400", 60),
    ("ram_gb_seconds", "28800", 60),
]
with open(sys.argv[1], "w") as f:
    for i, (meter, value, minutes) in enumerate(events):
        f.write(json.dumps({"id": f"demo-{sys.argv[2]}-{i}", "source": "demo/collector",
                            "time": at(minutes), "data": {"meter": meter, "value": value}}) + "\n")
PY
run billing record --tenant "${tenants[0]}" --file "$usage_file"
echo "# the same batch again: every event is a duplicate, counted once"
run billing record --tenant "${tenants[0]}" --file "$usage_file"
run billing record --tenant "${tenants[0]}" --meter api_requests --value 25 --source demo/keelctl
run billing usage --tenant "${tenants[0]}" --meter api_requests --last 3h
run billing usage --tenant "${tenants[0]}" --meter cpu_core_seconds --last 1d --granularity day
run billing estimate --tenant "${tenants[0]}"

say "changing ${tenants[1]} to tier business, suspending ${tenants[2]}"
run tenant change-tier "${tenants[1]}" --tier business
run tenant suspend "${tenants[2]}" --reason "demo: unpaid invoice"
sleep 2

for t in "${tenants[@]}"; do
  say "timeline of $t"
  run timeline "kind:*" --tenant "$t" --last 1h --limit 100
done

say "one trace, from CreateTenant to ACTIVE (${tenants[0]})"
trace="$("$KEELCTL" timeline "kind:tenant.TenantCreated" --tenant "${tenants[0]}" --last 1h --output json \
  | python3 -c 'import json,sys; d=json.load(sys.stdin); ev=d["events"] if isinstance(d,dict) else d; print(ev[0]["trace_id"])')"
run obs trace "$trace" --tenant "${tenants[0]}"

say "what provisioning built for ${tenants[0]}"
ls -1 ".keel/gitops/tenants/${tenants[0]}" 2>/dev/null || true
echo
echo "The mesh keeps running (just up in the background); stop it with: pkill -INT -f 'keelctl dev up'"
