#!/usr/bin/env bash
# Start to all-healthy, side by side, on the same rendered stack with the same
# health-check timings: `stackctl start` against `docker-compose up -d` and
# waiting until every container reports healthy. Runs interleaved, RUNS times
# each (default 3), and prints a markdown table with median, min, max and the
# ratio. Needs `stackctl setup` and `stackctl build` done (images present).
# Uses host ports 80/443 etc.: nothing else of the stack may be running.
set -euo pipefail
cd "$(dirname "$0")/.."
S=${STACKCTL:-target/release/stackctl}
RUNS=${RUNS:-3}
TIMEOUT=${TIMEOUT:-600}
SP=bench-stackctl
CP=bench-compose

"$S" render -q
cd deploy
# What stackctl would start: every compose service whose image is on this host.
mapfile -t run < <(docker-compose config | python3 -c '
import subprocess, sys, yaml
for name, svc in yaml.safe_load(sys.stdin)["services"].items():
    if subprocess.run(["docker", "image", "inspect", svc["image"]], capture_output=True).returncode == 0:
        print(name)')
cd ..

now() { date +%s.%N; }
all_healthy() { # project
  local ids; ids=$(docker ps -aq --filter "label=com.docker.compose.project=$1")
  [ -n "$ids" ] || return 1
  ! docker inspect -f '{{.State.Health.Status}}' $ids | grep -qv '^healthy$'
}

s_times=(); c_times=()
for i in $(seq 1 "$RUNS"); do
  "$S" -p "$SP" down --volumes --yes -q >/dev/null 2>&1 || true
  t0=$(now); "$S" -p "$SP" start -q; t1=$(now)
  s_times+=("$(echo "$t1 - $t0" | bc)")
  "$S" -p "$SP" down --volumes --yes -q

  (cd deploy && docker-compose -p "$CP" down -v >/dev/null 2>&1 || true)
  t0=$(now)
  (cd deploy && docker-compose -p "$CP" up -d --no-build "${run[@]}" >/dev/null 2>&1)
  deadline=$(( $(date +%s) + TIMEOUT ))
  until all_healthy "$CP"; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "compose: not healthy after ${TIMEOUT}s" >&2; break; }
    sleep 0.5
  done
  t1=$(now)
  c_times+=("$(echo "$t1 - $t0" | bc)")
  (cd deploy && docker-compose -p "$CP" down -v >/dev/null 2>&1)
  echo "run $i: stackctl ${s_times[-1]}s, docker-compose ${c_times[-1]}s" >&2
done

stats() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.1f %.1f %.1f", m, a[1], a[NR]}'; }
read -r sm smin smax <<<"$(stats "${s_times[@]}")"
read -r cm cmin cmax <<<"$(stats "${c_times[@]}")"
echo
echo "| start to all-healthy (${#run[@]} containers, $RUNS runs) | median s | min s | max s |"
echo "|---|---:|---:|---:|"
echo "| stackctl start | $sm | $smin | $smax |"
echo "| docker-compose up -d + wait healthy | $cm | $cmin | $cmax |"
echo "| ratio (compose / stackctl) | $(echo "scale=1; $cm / $sm" | bc) | | |"
