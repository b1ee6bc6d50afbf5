#!/usr/bin/env bash
# stackctl benchmark harness (issue 8): one command, every case, interleaved
# contenders, markdown table + SVG chart.
#
#   bash bench/run.sh
#
# Cases (BENCH_CASES, space-separated, default all, in this order):
#   sizes     image size of each service against the original figures
#   build     image step cold / no-change / after a one-line change:
#             `stackctl build --no-cargo` vs `docker-compose build` on the same
#             rendered files (+ the common cargo step; a cold cargo build once
#             with BENCH_COLD=1)
#   start     start to all-healthy: `stackctl start` vs `docker-compose up -d`
#             + waiting until every container is healthy
#   deploy    rolling deploy of one changed service + rollback under a bounded
#             load loop (needs `stackctl deploy`/`rollback`; skipped without)
#   gateway   throughput and p99 through the stack (Nginx -> api-gateway ->
#             user-management) vs Nginx proxying to user-management directly;
#             RSS of every service idle and under that load
#   overhead  latency of `stackctl validate|render|health|status`
#
# Knobs: RUNS (rounds per case, default 3; START_RUNS and CHANGE_RUNS, the
# rounds of the two slow parts -- a compose start takes ~3 min, a one-line
# change recompiles a service -- default to min(RUNS, 2)), BENCH_SECS (seconds per load
# round, default 5), BENCH_COLD=1 (also time one cold cargo build of the six
# services in a fresh target dir: ~14 min on 2 cores), BENCH_CASES,
# BENCH_WORK (scratch dir, default /var/tmp/stackctl-bench), STACKCTL (a
# stackctl binary; default: built here with cargo), CARGO_TARGET_DIR (where
# the static service binaries are/go, as for `stackctl build`).
#
# Prerequisites: Docker Engine, docker-compose 1.29, the Debian-built infra
# images (`stackctl setup` builds them), a Rust toolchain. wrk and hyperfine
# are installed with apt-get when missing. Everything runs in a scratch copy
# of the stack (stack name `bench-ai1c`, projects `bench-stackctl` and
# `bench-compose`, host ports 28xxx/29xxx/23xxx): nothing of another stack on
# the host is touched. Results: bench/results/latest.md and latest.svg (a run
# of only some cases writes them under $BENCH_WORK/results instead).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-3}
START_RUNS=${START_RUNS:-$(( RUNS < 2 ? RUNS : 2 ))}    # compose needs ~3 min a start
CHANGE_RUNS=${CHANGE_RUNS:-$(( RUNS < 2 ? RUNS : 2 ))}  # a one-line change recompiles (~50 s)
BENCH_SECS=${BENCH_SECS:-5}
BENCH_COLD=${BENCH_COLD:-0}
ALL_CASES="sizes build start deploy gateway overhead"
BENCH_CASES=${BENCH_CASES:-$ALL_CASES}
W=${BENCH_WORK:-/var/tmp/stackctl-bench}
# Only a run of every case replaces the committed results.
if [ "$BENCH_CASES" = "$ALL_CASES" ]; then RESULTS=${BENCH_RESULTS:-$REPO/bench/results}; else RESULTS=${BENCH_RESULTS:-$W/results}; fi
TRIPLE=x86_64-unknown-linux-gnu
TGT=${CARGO_TARGET_DIR:-$REPO/target}
case "$TGT" in /*) ;; *) TGT=$REPO/$TGT ;; esac
BIN_DIR=$TGT/$TRIPLE/release
ST=$W/stack                 # the scratch stack root
DEP=$ST/deploy              # its rendered files
SP=bench-stackctl           # stackctl's project
CP=bench-compose            # docker-compose's project
ENVN=bench                  # the environment the scratch stack.toml adds
NAME=bench-ai1c             # the scratch stack's name (image repositories, labels)
TAG=bench                   # the image tag cases after `build` run
CHANGE_PKG=${BENCH_CHANGE_SERVICE:-security}   # the service the one-line change touches
CHANGE_FILE=$REPO/services/$CHANGE_PKG/src/main.rs
MARK="// stackctl-bench one-line change"
# Host ports: stackctl's stack and compose's stack never share one.
SP_PORTS=(PORT_NGINX_80=28080 PORT_NGINX_443=28443 PORT_PROMETHEUS_9090=29090 PORT_GRAFANA_3000=23001 PORT_NODE_EXPORTER_9100=29100)
CP_PORTS=(PORT_NGINX_80=28180 PORT_NGINX_443=28543 PORT_PROMETHEUS_9090=29190 PORT_GRAFANA_3000=23101 PORT_NODE_EXPORTER_9100=29200)
DIRECT_PORT=28444           # Nginx proxying to user-management directly
ROUTE=/api/v1/user-management/.well-known/jwks.json
TIMEOUT=${BENCH_TIMEOUT:-600}

T_START=$(date +%s)
BINS=()
mkdir -p "$W" "$RESULTS"
SAMPLES=$W/samples.tsv
CASES=$W/cases.tsv
LOG=$W/run.log
NOTES=$W/notes.md
: >"$SAMPLES"; : >"$CASES"; : >"$LOG"; : >"$NOTES"

say() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" | tee -a "$LOG" >&2; }
die() { say "error: $*"; exit 1; }
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }
sample() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$SAMPLES"; }
case_def() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$CASES"; }
note() { printf '%s\n' "$*" >>"$NOTES"; }
want() { [[ " $BENCH_CASES " == *" $1 "* ]]; }
quiet() { "$@" >>"$LOG" 2>&1; }

# ------------------------------------------------------------------ tools
need_tools() {
  local missing=()
  command -v wrk >/dev/null || missing+=(wrk)
  command -v hyperfine >/dev/null || missing+=(hyperfine)
  command -v bc >/dev/null || missing+=(bc)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} (apt-get)"
    quiet apt-get update -qq && DEBIAN_FRONTEND=noninteractive quiet apt-get install -y -qq "${missing[@]}" ||
      die "cannot install ${missing[*]}: install them (apt-get install ${missing[*]}) and run again"
  fi
  command -v docker >/dev/null || die "docker CLI not found"
  command -v docker-compose >/dev/null || die "docker-compose not found (1.29: apt-get install docker-compose)"
  docker info >/dev/null 2>&1 || die "the Docker daemon cannot be reached"
}

stackctl_bin() {
  local t0; t0=$(now)
  if [ -n "${STACKCTL:-}" ]; then S=$STACKCTL; else
    say "cargo build --release --bin stackctl"
    (cd "$REPO" && quiet cargo build --release --bin stackctl) || die "cargo build of stackctl failed (see $LOG)"
    S=$TGT/release/stackctl
  fi
  STACKCTL_PREP_SECS=$(printf '%.0f' "$(since "$t0")")
  [ -x "$S" ] || die "no stackctl binary at $S"
}

# The services' packages and binaries, from the resolved stack.
services_json() { (cd "$REPO" && "$S" config --format json); }
read_services() {
  mapfile -t PKGS < <(services_json | python3 -c 'import json,sys; print("\n".join(sorted({s["package"] for s in json.load(sys.stdin)["services"]})))')
  mapfile -t BINS < <(services_json | python3 -c 'import json,sys; print("\n".join(s["binary"] for s in json.load(sys.stdin)["services"]))')
  mapfile -t APPS < <(services_json | python3 -c 'import json,sys; print("\n".join(s["name"] for s in json.load(sys.stdin)["services"]))')
}

# The same cargo command `stackctl build` runs (one static build of every service).
cargo_services() { # [extra env...]
  local args=()
  for p in "${PKGS[@]}"; do args+=(-p "$p"); done
  local flags; flags=$(echo "${RUSTFLAGS:-} -C target-feature=+crt-static" | sed 's/^ *//')
  (cd "$REPO" && env "$@" RUSTFLAGS="$flags" \
    cargo build --release --quiet --target "$TRIPLE" "${args[@]}") >>"$LOG" 2>&1
}

# ------------------------------------------------------- the scratch stack
# stack.toml with its own name and a `bench` environment (rate limits out of
# the load tests' way, no logging stack); the services and templates linked,
# the static binaries hard-linked where both contenders read them.
prepare_scratch() {
  mkdir -p "$ST/target/$TRIPLE/release"
  sed "0,/^name = \".*\"/s//name = \"$NAME\"/" "$REPO/stack.toml" >"$ST/stack.toml"
  cat >>"$ST/stack.toml" <<'EOF'

# ------------------------------------------------- added by bench/run.sh
[environments.bench]
description = "benchmarks: rate limits out of the load tests' way, no logging stack"

[environments.bench.infra.nginx]
rate_limit = 100000
rate_burst = 100000

[environments.bench.logging]
enabled = false

[environments.bench.services.api-gateway]
env = { RATE_LIMIT_RPS = "0" }
EOF
  ln -sfn "$REPO/services" "$ST/services"
  [ -d "$REPO/templates" ] && ln -sfn "$REPO/templates" "$ST/templates"
  sync_bins
  (cd "$ST" && "$S" -e "$ENVN" -p "$SP" render -q) || die "render of the scratch stack failed"
}
sync_bins() {
  for b in "${BINS[@]}"; do
    [ -f "$BIN_DIR/$b" ] || die "no binary $BIN_DIR/$b: build the services first (stackctl build), or set CARGO_TARGET_DIR"
    ln -f "$BIN_DIR/$b" "$ST/target/$TRIPLE/release/$b" 2>/dev/null || cp -f "$BIN_DIR/$b" "$ST/target/$TRIPLE/release/$b"
  done
}
sctl() { (cd "$ST" && env "${SP_PORTS[@]}" CARGO_TARGET_DIR="$ST/target" "$S" -e "$ENVN" -p "$SP" "$@"); }
dc() { (cd "$DEP" && env "${CP_PORTS[@]}" docker-compose -p "$CP" "$@"); }

# Every image of the scratch stack (final and intermediate: the classic
# builder's cache), never another stack's.
rm_bench_images() {
  local ids
  ids=$(docker images -a -q --filter "label=io.stackctl.stack=$NAME" | sort -u)
  [ -z "$ids" ] || docker rmi -f $ids >>"$LOG" 2>&1 || true
}

# Every long-running container of a compose project running and healthy, and
# every one-shot job (migrations) exited 0: "all-healthy".
all_healthy() { # compose project, expected number of long-running containers
  local ids; ids=$(docker ps -aq --filter "label=com.docker.compose.project=$1")
  [ -n "$ids" ] || return 1
  docker inspect -f '{{.State.Status}} {{.State.ExitCode}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' $ids |
    awk -v want="$2" '$1=="running" && $3=="healthy" {ok++; next} $1=="exited" && $2==0 {next} {bad++}
      END {exit !(bad==0 && ok>=want)}'
}
stacks_down() {
  sctl down --volumes --yes -q >>"$LOG" 2>&1 || true
  dc down -v --remove-orphans >>"$LOG" 2>&1 || true
  # and stackctl's deploy history of the bench project (revision holders, the
  # lock): their images are removed by the build case
  local ids; ids=$(docker ps -aq --filter "label=io.stackctl.project=$SP")
  [ -z "$ids" ] || docker rm -f $ids >>"$LOG" 2>&1 || true
  rm -rf "$ST/.stackctl/revisions/$SP"
  docker rm -f "$SP-nginx-direct" >>"$LOG" 2>&1 || true
}

# The unchanged binaries, saved before a one-line change and put back after
# it (also by the EXIT trap: a run stopped mid-change leaves no changed binary).
save_bins() {
  [ -d "$W/orig-bins" ] && return 0
  mkdir -p "$W/orig-bins.tmp"
  for b in "${BINS[@]}"; do cp -p "$BIN_DIR/$b" "$W/orig-bins.tmp/$b"; done
  mv "$W/orig-bins.tmp" "$W/orig-bins"
}
restore_bins() {
  [ -d "$W/orig-bins" ] || return 0
  say "  restoring the unchanged binaries"
  for b in "${BINS[@]}"; do
    # a new file, not a write through the hard links of the scratch stack
    cp -p "$W/orig-bins/$b" "$BIN_DIR/.$b.bench" && mv -f "$BIN_DIR/.$b.bench" "$BIN_DIR/$b"
  done
  rm -rf "$W/orig-bins"
  sync_bins
}

# The one-line change, always removed again (by its marker line only, so a
# concurrent edit of the file survives).
# Only when the line is there: `sed -i` rewrites the file, and a new mtime
# alone makes cargo recompile the service.
revert_change() { [ -f "$CHANGE_FILE" ] && grep -qF "$MARK" "$CHANGE_FILE" && sed -i "\|$MARK|d" "$CHANGE_FILE" || true; }
apply_change() { # unique id
  revert_change
  printf '#[used] static STACKCTL_BENCH_CHANGE: [u8; %d] = *b"%s"; %s\n' "${#1}" "$1" "$MARK" >>"$CHANGE_FILE"
}
cleanup() {
  revert_change
  [ ${#BINS[@]} -gt 0 ] && restore_bins >/dev/null 2>&1
  docker rm -f "$SP-nginx-direct" >/dev/null 2>&1 || true
  [ -n "${LOAD_PID:-}" ] && kill "$LOAD_PID" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ================================================================== cases
# 1. image sizes
case_sizes() {
  say "case sizes"
  case_def sizes "1. Image size of each service (FROM scratch, static binary) against the original images" "MB" \
    "stackctl image" "original" "original / stackctl" \
    "Sizes as \`docker image inspect\` reports them (one measurement: a size does not vary). The original per-service figures are those of the hand-written Dockerfiles (45-130 MB)."
  local -A orig=([api-gateway]=45 [ai-assistant]=120 [1c-integration]=110 [user-management]=95 [analytics]=130 [security]=105)
  for svc in api-gateway ai-assistant 1c-integration user-management analytics security; do
    local bytes
    bytes=$(docker image inspect -f '{{.Size}}' "$NAME/$svc:$TAG") || die "no image $NAME/$svc:$TAG"
    sample sizes "$svc" "stackctl image" "$(echo "scale=2; $bytes / 1000000" | bc)"
    sample sizes "$svc" "original" "${orig[$svc]}"
  done
}

# 2. builds
build_s() { sctl build --no-cargo -q >>"$LOG" 2>&1 </dev/null; }
build_c() { dc build "$@" >>"$LOG" 2>&1 </dev/null; }
case_build() {
  say "case build"
  case_def build "2. Build of the ${#APPS[@]} images (six services + the 1C simulator)" "seconds" \
    "stackctl build" "docker-compose build" "compose / stackctl" \
    "$(cat <<'TXT'
Design. `stackctl build` = one static `cargo build --release` of every service, then each `FROM scratch` image assembled (one layer: CA bundle and binary, the rendered Dockerfile's metadata) and loaded through the Engine API, no builder step (inputs-hash cache: an image whose inputs are unchanged is not touched). docker-compose builds from the same rendered `deploy/docker-compose.yml`, whose `build:` sections use `deploy/services/<svc>/Dockerfile` (the one that COPYs the prebuilt static binary; context: the stack root, sent whole: the classic builder reads only a `.dockerignore` at the context root, and the rendered ones sit beside the Dockerfiles). `Dockerfile.multistage` needs the `rust` base image, which cannot be pulled here (no registry), so compose cannot compile the services itself: the cargo step is the same command for both contenders, timed once and shown in both columns (rows *cargo (common)*); the rows *image step* time each contender. *Cold*: every image of the scratch stack removed first, final and intermediate (the classic builder's cache), then `stackctl build`; then `docker-compose build --no-cache` (every step executed: stackctl's images are still there and would otherwise serve as compose's layer cache). *No change*: the same build again, contenders alternating who goes first. *One-line change* (CHANGE_RUNS rounds): a line appended to one service's `main.rs` (BENCH_CHANGE_SERVICE, default security; a `#[used]` static with a unique string, so the binary really changes), cargo, the line removed again; then each contender's image step, the changed image removed after each so the other cannot reuse its layers.
TXT
)"
  note "- docker-compose's build context in this run: the scratch stack root, $(du -sh --apparent-size "$ST" | cut -f1) (the static binaries, rendered files, secrets), sent once per image. In a working checkout the stack root is the repository, target/ included."
  if [ "$BENCH_COLD" = 1 ]; then
    say "  cold cargo build of the services in a fresh target dir (BENCH_COLD=1)"
    rm -rf "$W/cold-target"
    local t0; t0=$(now)
    cargo_services CARGO_TARGET_DIR="$W/cold-target" || die "cold cargo build failed (see $LOG)"
    local dt; dt=$(since "$t0")
    sample build "cold cargo build (common, once)" "stackctl build" "$dt"
    sample build "cold cargo build (common, once)" "docker-compose build" "$dt"
    rm -rf "$W/cold-target"
  else
    note "- Cold \`cargo build\` of the services: not measured in this run (BENCH_COLD=1 measures it once; ~14 min on 2 cores, common to both contenders)."
  fi
  for i in $(seq 1 "$RUNS"); do
    local t0
    rm_bench_images
    t0=$(now); IMAGE_TAG=b2-s build_s || die "stackctl build (cold) failed (see $LOG)"
    sample build "image step, cold" "stackctl build" "$(since "$t0")"
    t0=$(now); IMAGE_TAG=b2-c build_c --no-cache || die "docker-compose build --no-cache failed (see $LOG)"
    sample build "image step, cold" "docker-compose build" "$(since "$t0")"
    local order=(s c); [ $((i % 2)) -eq 0 ] && order=(c s)
    for who in "${order[@]}"; do
      if [ "$who" = s ]; then
        t0=$(now); IMAGE_TAG=b2-s build_s || die "stackctl build (no change) failed (see $LOG)"
        sample build "image step, no change" "stackctl build" "$(since "$t0")"
      else
        t0=$(now); IMAGE_TAG=b2-c build_c || die "docker-compose build (no change) failed (see $LOG)"
        sample build "image step, no change" "docker-compose build" "$(since "$t0")"
      fi
    done
    [ "$i" -le "$CHANGE_RUNS" ] || continue
    save_bins
    apply_change "round$i-$(date +%s%N)"
    t0=$(now); cargo_services || { revert_change; die "cargo build after the one-line change failed (see $LOG)"; }
    local tc; tc=$(since "$t0")
    revert_change
    sync_bins
    for who in "${order[@]}"; do
      local label fn tagv
      if [ "$who" = s ]; then label="stackctl build"; fn=build_s; tagv=b2-s; else label="docker-compose build"; fn=build_c; tagv=b2-c; fi
      t0=$(now); IMAGE_TAG=$tagv $fn || die "$label (one-line change) failed (see $LOG)"
      local ti; ti=$(since "$t0")
      # the changed image goes again, so the other contender cannot reuse its layers
      docker rmi -f "$NAME/$CHANGE_PKG:$tagv" >>"$LOG" 2>&1 || true
      sample build "one-line change: cargo (common)" "$label" "$tc"
      sample build "one-line change: image step" "$label" "$ti"
      sample build "one-line change: cargo + image step" "$label" "$(echo "$tc + $ti" | bc)"
    done
    say "  round $i done"
  done
  # Back to the unchanged binaries (the copies saved before the first change:
  # the same bytes cargo would build again, without a third compile).
  restore_bins
}

# 3. start to all-healthy
case_start() {
  say "case start"
  mapfile -t RUN_SVCS < <(dc config | python3 -c '
import re, subprocess, sys
svc = None
for line in sys.stdin:
    m = re.match(r"^  ([A-Za-z0-9_.-]+):\s*$", line)
    if m: svc = m.group(1); continue
    m = re.match(r"^    image: (\S+)", line)
    if m and svc and subprocess.run(["docker", "image", "inspect", m.group(1)], capture_output=True).returncode == 0:
        print(svc)' | sort -u)
  local n=0 s
  for s in "${RUN_SVCS[@]}"; do [[ "$s" == job-* ]] || n=$((n + 1)); done
  case_def start "3. Start to all-healthy, full stack ($n containers + $(( ${#RUN_SVCS[@]} - n )) one-shot migration jobs)" "seconds" \
    "stackctl start" "docker-compose up -d + wait healthy" "compose / stackctl" \
    "Same rendered stack, same health-check timings (interval 30 s, start period 60 s). stackctl starts each container as soon as its dependencies answer its own readiness probe (the same test through exec, every 500 ms), running the same migration jobs first, each before the services it gates; compose waits for Docker's health status (\`depends_on: service_healthy\`) at every dependency level, and the harness polls (every 0.5 s) until every container reports healthy and every migration job has exited 0. Volumes are removed between runs (first start: databases initialised each time). Containers whose image is not on this host (Grafana, Node Exporter: no registry) are left out for both."
  case_def start_tuned "3b. Start to all-healthy, docker-compose tuned: every health check every 2 s" "seconds" \
    "stackctl start" "docker-compose up -d, health interval 2 s" "compose (2 s) / stackctl" \
    "What a user tuning compose would do: an override file (\`docker-compose -f docker-compose.yml -f health-2s.yml\`) sets every health check's interval to 2 s (Docker probes at that interval during the start period too), so compose's \`service_healthy\` waits are at most about 2 s per dependency level; everything else as in 3, the same stackctl rounds on the other side (stackctl's own probe runs every 500 ms whatever the interval)."
  # Every service with a health check, its interval lowered to 2 s.
  dc config | python3 -c '
import sys, yaml
c = yaml.safe_load(sys.stdin)
out = {"version": c.get("version", "3.8"), "services": {}}
for name, svc in c.get("services", {}).items():
    if svc.get("healthcheck") and not svc["healthcheck"].get("disable"):
        out["services"][name] = {"healthcheck": {"interval": "2s"}}
yaml.safe_dump(out, sys.stdout, sort_keys=True)' >"$DEP/health-2s.yml" || die "cannot write the 2 s health-check override"
  compose_start() { # label, extra compose args...
    local label=$1 t0 deadline; shift
    dc "$@" down -v --remove-orphans >>"$LOG" 2>&1 || true
    t0=$(now)
    dc "$@" up -d --no-build "${RUN_SVCS[@]}" >>"$LOG" 2>&1 || die "docker-compose up ($label) failed (see $LOG)"
    deadline=$(( $(date +%s) + TIMEOUT ))
    until all_healthy "$CP" "$n"; do
      [ "$(date +%s)" -lt "$deadline" ] || die "compose ($label): not all healthy after ${TIMEOUT}s"
      sleep 0.5
    done
    COMPOSE_SECS=$(since "$t0")
    dc "$@" down -v --remove-orphans >>"$LOG" 2>&1
  }
  for i in $(seq 1 "$START_RUNS"); do
    # compose first, so the stack that stays up for the next cases is stackctl's
    local t0
    compose_start "as rendered"
    local tc=$COMPOSE_SECS
    sample start "start to all-healthy" "docker-compose up -d + wait healthy" "$tc"
    compose_start "health 2 s" -f docker-compose.yml -f health-2s.yml
    local tt=$COMPOSE_SECS
    sample start_tuned "start to all-healthy" "docker-compose up -d, health interval 2 s" "$tt"

    sctl down --volumes --yes -q >>"$LOG" 2>&1 || true
    t0=$(now); sctl start -q >>"$LOG" 2>&1 || die "stackctl start failed (see $LOG)"
    local ts; ts=$(since "$t0")
    sample start "start to all-healthy" "stackctl start" "$ts"
    sample start_tuned "start to all-healthy" "stackctl start" "$ts"
    sctl health -q >>"$LOG" 2>&1 || die "stackctl start returned but stackctl health says not all healthy"
    [ "$i" -eq "$START_RUNS" ] || sctl down --volumes --yes -q >>"$LOG" 2>&1
    say "  round $i: stackctl ${ts}s, docker-compose ${tc}s, docker-compose with 2 s health checks ${tt}s"
  done
}

ensure_stack_up() {
  if ! sctl health -q >>"$LOG" 2>&1; then
    say "starting the stackctl stack for the next cases"
    sctl start -q >>"$LOG" 2>&1 || die "stackctl start failed (see $LOG)"
  fi
}

# 4. rolling deploy + rollback
case_deploy() {
  if ! sctl deploy --help >/dev/null 2>&1 || ! sctl rollback --help >/dev/null 2>&1; then
    say "case deploy: skipped (this stackctl has no deploy/rollback command)"
    note "- Case 4 (rolling deploy and rollback): not measured: the stackctl binary used has no \`deploy\`/\`rollback\` command."
    return
  fi
  say "case deploy"
  local dflags=() rflags=()
  local dh rh; dh=$(sctl deploy --help); rh=$(sctl rollback --help)
  [[ "$dh" == *--yes* ]] && dflags+=(--yes)
  [[ "$dh" == *--watch* ]] && dflags+=(--watch 0)
  [[ "$dh" == *--no-build* ]] && dflags+=(--no-build)
  [[ "$rh" == *--yes* ]] && rflags+=(--yes)
  [[ "$rh" == *--watch* ]] && rflags+=(--watch 0)
  case_def deploy "4. Rolling deploy of one changed service (api-gateway) and rollback, under load" "" \
    "stackctl" "-" "-" \
    "Each round: every app image tagged anew, api-gateway's as a derived image (\`FROM\` it + a \`LABEL\`: a new image id, no recompile), then \`IMAGE_TAG=<new> stackctl deploy ${dflags[*]}\` and \`stackctl rollback${rflags[*]:+ ${rflags[*]}}\`, each timed, while \`bench/loadloop.py\` sends GET $ROUTE through Nginx and the gateway (4 keep-alive clients, at most 100 req/s, bounded in time and count). A request fails when it errors or answers anything but 200. \`--watch 0\`: the post-cutover health watch (a wait, not part of the rollout) is not timed."
  ensure_stack_up
  IMAGE_TAG=$TAG sctl deploy "${dflags[@]}" -q >>"$LOG" 2>&1 || die "baseline stackctl deploy failed (see $LOG)"
  local url="https://127.0.0.1:28443$ROUTE"
  for i in $(seq 1 "$RUNS"); do
    local nt="bench-d$i-$$"
    for a in "${APPS[@]}"; do
      if [ "$a" = api-gateway ]; then
        printf 'FROM %s\nLABEL bench.change=%s\n' "$NAME/$a:$TAG" "$nt" | docker build -q -t "$NAME/$a:$nt" - >>"$LOG" 2>&1 ||
          die "derived api-gateway image failed (see $LOG)"
      else
        docker tag "$NAME/$a:$TAG" "$NAME/$a:$nt"
      fi
    done
    local what tagv flags
    for what in deploy rollback; do
      if [ "$what" = deploy ]; then tagv=$nt; flags=("${dflags[@]}"); else tagv=$TAG; flags=("${rflags[@]}"); fi
      python3 "$REPO/bench/loadloop.py" "$url" --workers 4 --rate 100 --max-seconds 300 --max-requests 60000 >"$W/load.json" &
      LOAD_PID=$!
      sleep 2
      local t0 dt; t0=$(now)
      IMAGE_TAG=$tagv sctl "$what" "${flags[@]}" >>"$LOG" 2>&1 || { kill -INT "$LOAD_PID"; die "stackctl $what failed (see $LOG)"; }
      dt=$(since "$t0")
      sleep 2
      kill -INT "$LOAD_PID"; wait "$LOAD_PID" || true; LOAD_PID=
      local failed total
      read -r failed total < <(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["failed"], d["requests"])' "$W/load.json")
      sample deploy "$what: wall time (s)" stackctl "$dt"
      sample deploy "$what: failed requests" stackctl "$failed"
      sample deploy "$what: requests sent during it" stackctl "$total"
      say "  round $i $what: ${dt}s, $failed of $total requests failed"
    done
    for a in "${APPS[@]}"; do docker rmi "$NAME/$a:$nt" >>"$LOG" 2>&1 || true; done
  done
}

# 5 + 6. gateway vs Nginx direct; RSS idle and under load
rss_mb() { # container -> RSS in MB: VmRSS of its process (FROM scratch: one process)
  local pid; pid=$(docker inspect -f '{{.State.Pid}}' "$1")
  awk '/^VmRSS:/{printf "%.2f\n", $2/1024}' "/proc/$pid/status"
}
svc_container() { docker ps -q --filter "label=io.stackctl.project=$SP" --filter "label=io.stackctl.service=$1" | head -1; }
rss_all() { # contender label
  for a in "${SIX[@]}"; do
    local c; c=$(svc_container "$a")
    [ -n "$c" ] && sample memory "$a" "$1" "$(rss_mb "$c")"
  done
}
wrk_round() { # url contender-label [sample-rss]
  local out=$W/wrk.txt
  wrk -t2 -c32 -d"${BENCH_SECS}s" --timeout 5s --latency "$1" >"$out" 2>&1 &
  local pid=$!
  if [ "${3:-}" = rss ]; then sleep "$(echo "$BENCH_SECS / 2" | bc -l)"; rss_all "under load"; fi
  wait "$pid" || die "wrk failed: $(cat "$out")"
  cat "$out" >>"$LOG"
  python3 - "$out" "$2" >>"$SAMPLES" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
who = sys.argv[2]
unit = {"us": 0.001, "ms": 1.0, "s": 1000.0}
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
def pct(p):
    m = re.search(r"^\s+%s%%\s+([\d.]+)(us|ms|s)\s*$" % p, t, re.M)
    return float(m.group(1)) * unit[m.group(2)]
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)
for row, v in (("throughput (req/s)", rps), ("p50 latency (ms)", pct(50)), ("p99 latency (ms)", pct(99)), ("errors (non-2xx + socket)", errors)):
    print(f"gateway\t{row}\t{who}\t{v}")
PY
}
case_gateway() {
  say "case gateway + memory"
  ensure_stack_up
  SIX=(api-gateway ai-assistant 1c-integration user-management analytics security)
  local A="Nginx -> api-gateway -> user-management (the stack)" B="Nginx -> user-management (direct)"
  case_def gateway "5. Gateway throughput and latency through the stack against Nginx proxying directly" "" \
    "$A" "$B" "direct / stack" \
    "wrk, 2 threads, 32 keep-alive HTTPS connections, ${BENCH_SECS} s per round, GET $ROUTE on 127.0.0.1 (the published port: docker-proxy, then Nginx with TLS). *Stack*: the stack's own Nginx (the rendered nginx.conf) -> api-gateway (JWT-free public route, rate limit off in the bench environment) -> user-management. *Direct*: a second container of the same Nginx image, same rendered nginx.conf except the upstream (user-management, path prefix stripped), same limits as the stack's Nginx (0.25 CPU, 128 MB; the gateway and user-management have 0.5 CPU each), on the same networks. Rounds alternate the two. The rendered Nginx resolves its upstream per request (rolling deploys) and so opens a connection per request, as in production."
  case_def memory "6. Memory (RSS) of each service idle and under the gateway load" "MiB" \
    "idle" "under load" "load / idle" \
    "RSS = VmRSS of the service's process (/proc/PID/status; the images are FROM scratch, one process each), in MiB, sampled ${RUNS} times idle (1 s apart, before the load) and once in the middle of each round of the stack load above. That load only goes through Nginx, api-gateway and user-management; the others serve health probes and metrics scrapes."

  # the direct Nginx: the rendered config, upstream replaced
  local conf=$W/nginx-direct.conf
  python3 - "$DEP/nginx/nginx.conf" "$conf" <<'PY'
import sys
src = open(sys.argv[1]).read()
old = "set $gateway http://api-gateway:3000;"
if old not in src:
    sys.exit(f"{sys.argv[1]}: no line {old!r} to point at user-management")
new = "set $gateway http://user-management:8002;\n            rewrite ^/api/v1/user-management/(.*)$ /$1 break;"
open(sys.argv[2], "w").write(src.replace(old, new, 1))
PY
  local nginx_img; nginx_img=$(docker inspect -f '{{.Config.Image}}' "$(svc_container nginx)")
  local fe be; fe=$(docker network ls -q --filter "label=io.stackctl.project=$SP" --filter name=frontend | head -1)
  be=$(docker network ls -q --filter "label=io.stackctl.project=$SP" --filter name=backend | head -1)
  [ -n "$fe" ] && [ -n "$be" ] || die "cannot find the frontend/backend networks of $SP"
  docker rm -f "$SP-nginx-direct" >>"$LOG" 2>&1 || true
  docker run -d --name "$SP-nginx-direct" --network "$fe" -p "127.0.0.1:$DIRECT_PORT:443" \
    --cpus 0.25 --memory 128m --read-only --tmpfs /tmp --tmpfs /var/cache/nginx --tmpfs /var/lib/nginx --tmpfs /run \
    --cap-drop ALL --cap-add CHOWN --cap-add NET_BIND_SERVICE --cap-add SETGID --cap-add SETUID \
    --security-opt no-new-privileges:true \
    -v "$conf:/etc/nginx/nginx.conf:ro" \
    -v "$ST/secrets/nginx-tls-cert:/run/secrets/nginx-tls-cert:ro" \
    -v "$ST/secrets/nginx-tls-key:/run/secrets/nginx-tls-key:ro" \
    "$nginx_img" >>"$LOG" 2>&1 || die "cannot start the direct Nginx (see $LOG)"
  docker network connect "$be" "$SP-nginx-direct" >>"$LOG" 2>&1 || die "cannot connect the direct Nginx to the backend network"
  local ua="https://127.0.0.1:28443$ROUTE" ub="https://127.0.0.1:$DIRECT_PORT$ROUTE" n=0
  until curl -fsk -o /dev/null "$ub" && curl -fsk -o /dev/null "$ua"; do
    n=$((n + 1)); [ $n -lt 60 ] || die "$ua or $ub does not answer 200 (see docker logs $SP-nginx-direct)"
    sleep 0.5
  done
  for i in $(seq 1 "$RUNS"); do rss_all idle; sleep 1; done
  for i in $(seq 1 "$RUNS"); do
    if [ $((i % 2)) -eq 1 ]; then wrk_round "$ua" "$A" rss; wrk_round "$ub" "$B"
    else wrk_round "$ub" "$B"; wrk_round "$ua" "$A" rss; fi
    say "  round $i done"
  done
  docker rm -f "$SP-nginx-direct" >>"$LOG" 2>&1 || true
}

# 7. stackctl's own overhead
case_overhead() {
  say "case overhead"
  ensure_stack_up
  case_def overhead "7. stackctl's own overhead (wall time of one command)" "ms" \
    "stackctl" "reference command" "reference / stackctl" \
    "hyperfine, ${RUNS} rounds of 5 runs per command (1 warm-up), the stack up ($(docker ps -q --filter "label=io.stackctl.project=$SP" | wc -l) containers). References: \`docker-compose config -q\` (validate), \`docker-compose config\` (render: compose only interpolates), \`docker ps\` filtered to the project (health, status: one engine round-trip listing the same containers, no probe)."
  local j=$W/hyperfine.json
  local base="$S -e $ENVN -p $SP"
  for i in $(seq 1 "$RUNS"); do
    (cd "$ST" && env "${SP_PORTS[@]}" hyperfine -N --warmup 1 --runs 5 --export-json "$j" \
      -n validate "$base validate -q" \
      -n render "$base render -q --out $W/render-out" \
      -n health "$base health -q" \
      -n status "$base status -q" \
      -n ref-validate "docker-compose -f $DEP/docker-compose.yml config -q" \
      -n ref-render "docker-compose -f $DEP/docker-compose.yml config" \
      -n ref-ps "docker ps --filter label=io.stackctl.project=$SP") >>"$LOG" 2>&1 || die "hyperfine failed (see $LOG)"
    python3 - "$j" >>"$SAMPLES" <<'PY'
import json, sys
res = {r["command"]: r["times"] for r in json.load(open(sys.argv[1]))["results"]}
pairs = [("validate", "ref-validate"), ("render", "ref-render"), ("health", "ref-ps"), ("status", "ref-ps")]
for cmd, ref in pairs:
    for t in res[cmd]:
        print(f"overhead\t{cmd}\tstackctl\t{t * 1000:.2f}")
    for t in res[ref]:
        print(f"overhead\t{cmd}\treference command\t{t * 1000:.2f}")
PY
  done
}

# ------------------------------------------------------------------- main
machine() {
  local cpu mem
  cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
  mem=$(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo)
  echo "$(nproc) cores (${cpu:-unknown CPU}), $mem, $(uname -sr), $(. /etc/os-release && echo "$PRETTY_NAME"); Docker Engine $(docker version -f '{{.Server.Version}} (API {{.Server.APIVersion}})'), $(docker info -f 'storage driver {{.Driver}}, cgroup v{{.CgroupVersion}}'), $(docker-compose version --short | sed 's/^/docker-compose /'), $(wrk -v 2>&1 | head -1 | awk '{print "wrk", $2}'), $(hyperfine --version)"
}
load_avg() { cut -d' ' -f1-3 /proc/loadavg; }

main() {
  need_tools
  stackctl_bin
  read_services
  revert_change   # a run killed before its trap leaves the marker line behind
  local load0 m; load0=$(load_avg); m=$(machine)
  say "machine: $m; load average $load0"
  say "cargo build of the services (the command stackctl build runs; a no-op when up to date)"
  local t_prep; t_prep=$(now)
  cargo_services || die "cargo build of the services failed (see $LOG)"
  PREP_SECS=$(printf '%.0f' "$(since "$t_prep")")
  say "  took ${PREP_SECS}s"
  rm -rf "$W/orig-bins"   # a killed run's copies: these binaries are current
  export IMAGE_TAG=$TAG
  prepare_scratch
  sctl setup -q >>"$LOG" 2>&1 || die "stackctl setup of the scratch stack failed (see $LOG)"
  stacks_down
  want build && case_build
  IMAGE_TAG=$TAG build_s || die "stackctl build of the scratch stack failed (see $LOG)"
  want sizes && case_sizes
  RUN_SVCS=()
  want start && case_start
  want deploy && case_deploy
  want gateway && case_gateway
  want overhead && case_overhead
  stacks_down
  local secs=$(( $(date +%s) - T_START ))
  {
    echo "# Benchmark results"
    echo
    echo "\`bash bench/run.sh\` (RUNS=$RUNS, BENCH_SECS=$BENCH_SECS, BENCH_COLD=$BENCH_COLD, cases: $BENCH_CASES) at commit $(git -C "$REPO" rev-parse --short=12 HEAD)$(git -C "$REPO" diff --quiet HEAD -- src services templates 2>/dev/null || echo ' (+ uncommitted changes)'), $(date -u '+%Y-%m-%d %H:%M UTC'); the whole run took $((secs / 60)) min $((secs % 60)) s, of which ${STACKCTL_PREP_SECS}s building stackctl and ${PREP_SECS}s the services' cargo build before the cases (no-ops when the checkout's \`stackctl build\` is up to date)."
    echo
    echo "Machine: $m."
    echo
    echo "Load average (1/5/15 min) at the start: $load0; at the end: $(load_avg). ${BENCH_LOAD_NOTE:-}"
    echo
    echo "Every contender runs on the same scratch copy of the stack (\`$W/stack\`: stack.toml renamed \`$NAME\`, plus a \`bench\` environment that lifts the rate limits and drops the logging stack), the same rendered files, interleaved round by round. Tables: median, min and max over the rounds (n = samples per contender); the ratio is of the medians. Chart: [latest.svg](latest.svg)."
    echo
    [ -s "$NOTES" ] && { cat "$NOTES"; echo; }
  } >"$W/header.md"
  python3 "$REPO/bench/report.py" "$SAMPLES" "$CASES" "$RESULTS/latest.md" "$RESULTS/latest.svg" "$W/header.md"
  say "done in $((secs / 60)) min $((secs % 60)) s: $RESULTS/latest.md, $RESULTS/latest.svg (log: $LOG)"
}

main "$@"
