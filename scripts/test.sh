#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need
# (scripts/test-setup.sh), then runs every test of the workspace with nextest.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/stackctl-target}
export STACKCTL_LINT_VENV=${STACKCTL_LINT_VENV:-/var/tmp/stackctl-lint}
export TEST_DATABASE_URL=${TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
export TEST_REDIS_URL=${TEST_REDIS_URL:-redis://127.0.0.1:6379}
export PATH="$STACKCTL_LINT_VENV/bin:$PATH"

bash scripts/test-setup.sh

# The example's Python component has unit tests of its own.
python3 -m unittest discover -s examples/components/worker/tests

# Snapshots must match what is committed; never write new ones here.
export INSTA_UPDATE=no
cargo nextest run --workspace --no-fail-fast "$@"
