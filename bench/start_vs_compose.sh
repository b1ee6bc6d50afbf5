#!/usr/bin/env bash
# Start to all-healthy only (case 3 of bench/run.sh): `stackctl start` against
# `docker-compose up -d` plus waiting until every container is healthy, on the
# same rendered stack with the same health-check timings. RUNS as for run.sh.
exec env BENCH_CASES=start bash "$(dirname "$0")/run.sh" "$@"
