#!/usr/bin/env bash
# Makes PostgreSQL, Redis and RabbitMQ available on 127.0.0.1 (5432, 6379, 5672) for the tests
# and the distributed quickstart: installs them from the distribution's packages when missing,
# then starts whichever is not running. Idempotent: run it as often as you like.
#
#   bash ops/services.sh                    install what is missing, start what is not running
#   bash ops/services.sh stop  NAME         stop one service (postgresql, redis or rabbitmq)
#   bash ops/services.sh start NAME         start it again and wait until it answers
#
# `stop`/`start` are what the service-restart tests (tests/service_restarts.rs) use: a real
# outage of the server the workers talk to, not a simulated one.
#
# A PostgreSQL installed here is set up for local development: loopback connections are trusted
# (the tests connect as `postgres` without a password). An existing server is never changed.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

wait_for() { # name, command...
  local name=$1; shift
  for _ in $(seq 1 90); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  echo "error: $name did not come up" >&2; return 1
}

start_postgresql() {
  pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null && return 0
  local version
  version="$(ls /etc/postgresql | sort -V | tail -n1)"
  if ${fresh_postgres:-false}; then
    hba="/etc/postgresql/$version/main/pg_hba.conf"
    as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  fi
  echo "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_for PostgreSQL pg_isready -q -h 127.0.0.1 -p 5432
}
start_redis() {
  redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && return 0
  echo "starting Redis"
  as_root redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  wait_for Redis redis-cli -h 127.0.0.1 ping
}
start_rabbitmq() {
  if ! rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
    echo "starting RabbitMQ"
    as_root rabbitmq-server -detached
    wait_for RabbitMQ rabbitmq-diagnostics -q ping
  fi
  # A node whose application was stopped (`stop rabbitmq`) answers ping but serves no AMQP.
  if ! bash -c 'exec 3<>/dev/tcp/127.0.0.1/5672' 2>/dev/null; then
    as_root rabbitmqctl -q start_app
  fi
  wait_for "RabbitMQ listener" bash -c 'exec 3<>/dev/tcp/127.0.0.1/5672'
}
stop_postgresql() {
  local version
  version="$(ls /etc/postgresql | sort -V | tail -n1)"
  echo "stopping PostgreSQL $version"
  # fast: clients are disconnected at once, as in a crash or an operator's restart.
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main stop -m fast
}
stop_redis() {
  echo "stopping Redis"
  redis-cli -h 127.0.0.1 shutdown nosave >/dev/null 2>&1 || true
  for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 || return 0; sleep 0.1; done
  echo "error: Redis did not stop" >&2; return 1
}
stop_rabbitmq() {
  echo "stopping RabbitMQ"
  # The broker application stops (every connection closed, listeners gone); the Erlang node
  # stays, so `start rabbitmq` brings it back in seconds. Durable queues keep their messages.
  as_root rabbitmqctl -q stop_app
}

case "${1:-}" in
  stop | start)
    case "${2:-}" in
      postgresql | redis | rabbitmq) "$1_$2"; exit 0 ;;
      *) echo "usage: bash ops/services.sh [stop|start postgresql|redis|rabbitmq]" >&2; exit 2 ;;
    esac
    ;;
  "") ;;
  *) echo "usage: bash ops/services.sh [stop|start postgresql|redis|rabbitmq]" >&2; exit 2 ;;
esac

missing=()
for p in postgresql redis-server rabbitmq-server; do installed "$p" || missing+=("$p"); done
fresh_postgres=false
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing services: ${missing[*]}"
  [[ " ${missing[*]} " == *" postgresql "* ]] && fresh_postgres=true
  as_root apt-get update -qq
  # A policy-rc.d that says "no" keeps the packages from starting their services through an init
  # system that may not exist (containers, CI); they are started below either way.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
    as_root chmod +x /usr/sbin/policy-rc.d
    trap 'as_root rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}"
fi

start_postgresql
start_redis
start_rabbitmq
echo "services ready: PostgreSQL 127.0.0.1:5432, Redis 127.0.0.1:6379, RabbitMQ 127.0.0.1:5672"
