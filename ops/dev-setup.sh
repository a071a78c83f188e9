#!/usr/bin/env bash
# Prepares a Debian/Ubuntu machine to build and test ragpipe: installs the C build dependencies
# FAISS needs (if missing) and starts PostgreSQL, Redis and RabbitMQ (if not running).
# Idempotent: run it as often as you like.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

packages=(cmake g++ pkg-config libopenblas-dev liblapack-dev poppler-utils)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}"
fi

wait_for() { # name, command...
  local name=$1; shift
  for _ in $(seq 1 60); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  echo "error: $name did not come up" >&2; return 1
}

if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  echo "starting PostgreSQL"
  as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  wait_for PostgreSQL pg_isready -q -h 127.0.0.1 -p 5432
fi
if ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
  echo "starting Redis"
  as_root redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  wait_for Redis redis-cli -h 127.0.0.1 ping
fi
if ! rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
  echo "starting RabbitMQ"
  as_root rabbitmq-server -detached
  wait_for RabbitMQ rabbitmq-diagnostics -q ping
  wait_for "RabbitMQ listener" bash -c 'exec 3<>/dev/tcp/127.0.0.1/5672'
fi
echo "services ready: PostgreSQL 127.0.0.1:5432, Redis 127.0.0.1:6379, RabbitMQ 127.0.0.1:5672"
