#!/usr/bin/env bash
# Build stackctl as one static binary (like the services: glibc linked in,
# -C target-feature=+crt-static), for CI to publish: a new developer
# downloads it instead of running `cargo install`. Prints where it is, its
# size and sha256. Usage: scripts/dist.sh [OUT_DIR]   (default: dist/)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-dist}
target=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --locked --release -p stackctl --target "$target"
bin="${CARGO_TARGET_DIR:-target}/$target/release/stackctl"
if ! ldd "$bin" 2>&1 | grep -qE 'statically linked|not a dynamic executable'; then
  echo "dist: $bin is dynamically linked: $(ldd "$bin" 2>&1 | head -3)" >&2
  exit 1
fi
mkdir -p "$out"
install -m 0755 "$bin" "$out/stackctl-$target"
( cd "$out" && sha256sum "stackctl-$target" > "stackctl-$target.sha256" )
echo "dist: $out/stackctl-$target ($(du -h "$out/stackctl-$target" | cut -f1), static)"
cat "$out/stackctl-$target.sha256"
