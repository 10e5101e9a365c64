#!/usr/bin/env bash
# Makes sure PostgreSQL and Redis run on 127.0.0.1 at their standard ports, and Keel's own NATS
# (JetStream, JWT auth) on 4333.
# Installs a missing one with apt, starts a stopped one, leaves a running one alone, and says
# what it did. Idempotent; safe to run before every `just up` / `just test`.
set -euo pipefail

say() { printf 'services: %s\n' "$*"; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  local port=$1 name=$2
  for _ in $(seq 1 100); do listening "$port" && return 0; sleep 0.1; done
  say "$name did not open port $port" >&2; return 1
}
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
apt_updated=""
need_pkg() {
  local cmd=$1 pkg=$2
  command -v "$cmd" >/dev/null 2>&1 && return 0
  say "installing $pkg (apt)"
  [ -n "$apt_updated" ] || { $SUDO apt-get update -qq; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$pkg" >/dev/null
}

# PostgreSQL
if listening 5432; then
  say "postgresql already running on 5432"
else
  need_pkg psql postgresql
  ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)
  if [ -z "$ver" ]; then need_pkg pg_ctlcluster postgresql; ver=$(ls /etc/postgresql | sort -V | tail -1); fi
  say "starting postgresql $ver"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start || $SUDO pg_ctlcluster "$ver" main start
  wait_port 5432 postgresql
fi
# The database Keel uses by default (services each own a schema in it).
PSQL=(psql -h 127.0.0.1 -U postgres -d postgres -tAq)
if ! "${PSQL[@]}" -c "SELECT 1" >/dev/null 2>&1; then
  PSQL=($SUDO -u postgres psql -d postgres -tAq)
fi
if [ "$("${PSQL[@]}" -c "SELECT 1 FROM pg_database WHERE datname = 'keel'")" != "1" ]; then
  "${PSQL[@]}" -c "CREATE DATABASE keel" && say "created database keel"
else
  say "database keel exists"
fi

# Keel's own NATS with JetStream and decentralized JWT auth on 127.0.0.1:4333 (the machine's
# open NATS on 4222, if any, is left alone). Its trust chain lives in $KEEL_NATS_HOME
# (~/.local/state/keel/nats): one per machine user, shared by every checkout.
KEEL_NATS_PORT=${KEEL_NATS_PORT:-4333}
need_pkg nats-server nats-server
root=$(cd "$(dirname "$0")/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
(cd "$root" && cargo build -q -p keelctl --bin keelctl)
nats_home=$("$target/debug/keelctl" nats home)
before=$({ cat "$nats_home/server.conf" 2>/dev/null || true; } | md5sum)
conf=$("$target/debug/keelctl" nats init --port "$KEEL_NATS_PORT")
if listening "$KEEL_NATS_PORT"; then
  if [ "$before" != "$(md5sum < "$conf")" ] && [ -s "$nats_home/nats.pid" ]; then
    say "keel nats configuration changed: reloading"
    kill -HUP "$(cat "$nats_home/nats.pid")"
  fi
  say "keel nats already running on $KEEL_NATS_PORT"
else
  say "starting keel nats-server on $KEEL_NATS_PORT ($conf)"
  start-stop-daemon --start --oknodo --background --make-pidfile --pidfile "$nats_home/nats.pid" \
    --exec "$(command -v nats-server)" -- -c "$conf" -l "$nats_home/nats.log"
  wait_port "$KEEL_NATS_PORT" "keel nats"
fi

# Redis
if listening 6379; then
  say "redis already running on 6379"
else
  need_pkg redis-server redis-server
  say "starting redis"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  $SUDO redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/keel.log
  wait_port 6379 redis
fi
# An SQS-compatible endpoint (moto, from PyPI) on 127.0.0.1:4576: where keel-billing exports
# usage records locally and in tests. In-memory: queues are created by whoever uses them.
KEEL_SQS_PORT=${KEEL_SQS_PORT:-4576}
if listening "$KEEL_SQS_PORT"; then
  say "sqs (moto) already running on $KEEL_SQS_PORT"
else
  if ! command -v moto_server >/dev/null 2>&1; then
    say "installing moto[server] (pip)"
    python3 -m pip install -q 'moto[server]' >/dev/null
    hash -r
  fi
  moto=$(command -v moto_server || echo "$(python3 -m site --user-base)/bin/moto_server")
  state=${XDG_STATE_HOME:-$HOME/.local/state}/keel
  mkdir -p "$state"
  say "starting sqs (moto) on $KEEL_SQS_PORT"
  start-stop-daemon --start --oknodo --background --make-pidfile --pidfile "$state/moto.pid" \
    --exec "$moto" -- -H 127.0.0.1 -p "$KEEL_SQS_PORT"
  wait_port "$KEEL_SQS_PORT" "sqs (moto)"
fi
say "ready: postgresql 127.0.0.1:5432 (db keel), keel nats 127.0.0.1:$KEEL_NATS_PORT (JetStream, JWT auth; creds: keelctl nats creds), redis 127.0.0.1:6379, sqs 127.0.0.1:$KEEL_SQS_PORT"
