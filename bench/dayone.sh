#!/usr/bin/env bash
# "A new developer ready in 5 minutes" (issue 15 #7), measured: clone to
# all-healthy on a machine that has none of the stack's images, when CI has
# already pushed this commit's images (the services' and the Debian-built
# infrastructure's) to a registry and published a static stackctl.
#
#   bash bench/dayone.sh
#
# What it does, with a registry on loopback (REGISTRY, default
# 127.0.0.1:5000/dayone; Debian's docker-registry package serves it, as
# scripts/test-setup.sh starts it):
#   as CI   : scripts/dist.sh (the static stackctl), then in this checkout
#             (it must be clean: the images are tagged with its commit)
#             `stackctl setup && stackctl build --push` (not timed)
#   as a new developer, timed step by step:
#             git clone; "download" the static binary (a copy of CI's);
#             stackctl setup; stackctl build; stackctl start; stackctl health
# Before the timed part every image of the stack is removed from the engine
# and setup gets an empty rootfs cache, so nothing built earlier is reused;
# debootstrap is not needed (and not used) when the registry has the images.
# The stack runs as project `dayone` on host ports 2xxxx; it is removed at
# the end. Prints a markdown table (bench/results/dayone.md).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REGISTRY=${REGISTRY:-127.0.0.1:5000/dayone}
WORK=${BENCH_WORK:-/var/tmp/stackctl-dayone}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/stackctl-target}
export STACKCTL_REGISTRY=$REGISTRY STACKCTL_PROJECT=dayone
export PORT_NGINX_80=24080 PORT_NGINX_443=24443 PORT_PROMETHEUS_9090=29090 \
  PORT_GRAFANA_3000=23000 PORT_NODE_EXPORTER_9100=29100 PORT_KIBANA_5601=25601 \
  PORT_ELASTICSEARCH_9200=29200
registry_host=${REGISTRY%%/*}
curl -fsS "http://$registry_host/v2/" >/dev/null || {
  echo "dayone: no registry at $registry_host (apt-get install docker-registry; it listens on 127.0.0.1:5000)" >&2
  exit 1
}
rm -rf "$WORK" && mkdir -p "$WORK"
step() { printf '\n== %s\n' "$*" >&2; }

step "CI: the static stackctl and this commit's images in $REGISTRY"
if [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no)" ]; then
  echo "dayone: commit first (CI's images are tagged with the commit)" >&2
  exit 1
fi
bash "$REPO/scripts/dist.sh" "$WORK/ci-dist" >&2
bin=$(ls "$WORK"/ci-dist/stackctl-* | grep -v sha256)
(cd "$REPO" && "$bin" setup -q && "$bin" build --push -q) >&2
commit=$(git -C "$REPO" rev-parse --short=12 HEAD)

step "a machine without the stack's images"
(cd "$REPO" && "$bin" down --volumes --yes -q) >&2 || true
docker images --format '{{.Repository}}:{{.Tag}}' \
  | grep -E '^(stackctl/|ai-assistants-1c/|'"$registry_host"'/)' \
  | xargs -r docker rmi -f >/dev/null
export STACKCTL_ROOTFS_CACHE=$WORK/empty-rootfs-cache
left=$(docker images -q | wc -l)
echo "images left on the engine: $left" >&2

declare -a names secs
timed() {
  local name=$1; shift
  local t0=$(date +%s.%N)
  "$@" >&2
  local t1=$(date +%s.%N)
  names+=("$name"); secs+=("$(echo "$t1 - $t0" | bc)")
}
t_start=$(date +%s.%N)
timed "git clone" git clone -q "$REPO" "$WORK/dev"
timed "download stackctl (copy of CI's static binary)" install -m 0755 "$bin" "$WORK/stackctl"
cd "$WORK/dev"
timed "stackctl setup (pulls the Debian-built images)" "$WORK/stackctl" setup
timed "stackctl build (pulls the services' images)" "$WORK/stackctl" build
timed "stackctl start (to all-healthy)" "$WORK/stackctl" start
timed "stackctl health" "$WORK/stackctl" health
total=$(echo "$(date +%s.%N) - $t_start" | bc)
"$WORK/stackctl" down --volumes --yes -q >&2 || true

mkdir -p "$REPO/bench/results"
{
  echo "# Clone to all-healthy with CI's images in a registry"
  echo
  echo "Commit $commit, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores; registry $REGISTRY on loopback;"
  echo "engine emptied of the stack's images first ($left other images left), empty rootfs cache."
  echo
  echo "| step | seconds |"
  echo "|---|---:|"
  for i in "${!names[@]}"; do printf '| %s | %.1f |\n' "${names[$i]}" "${secs[$i]}"; done
  printf '| **clone to all-healthy** | **%.1f** |\n' "$total"
} | tee "$REPO/bench/results/dayone.md"
