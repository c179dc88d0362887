#!/usr/bin/env bash
# Builds the shoal container image from this checkout, pulling nothing: cargo builds
# the binary, the script stages it (stripped) with the shared libraries `ldd` names
# under cluster/.image/, and `docker build` turns that into a FROM-scratch image
# (cluster/Dockerfile; .dockerignore sends only cluster/.image/ to the engine).
#
# Usage: cluster/build-image.sh [--profile release|debug] [--tag shoal:latest]
#   --profile  cargo profile of the binary (default release; debug reuses the binary
#              the test suite builds, which is much faster to get)
#   --tag      image name (default $SHOAL_IMAGE, else shoal:latest)
# Honours CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
tag=${SHOAL_IMAGE:-shoal:latest}
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "build-image.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

target_dir=${CARGO_TARGET_DIR:-target}
case "$profile" in
  release) echo "== cargo build --release"; cargo build --release --locked; bin=$target_dir/release/shoal ;;
  debug) echo "== cargo build"; cargo build --locked; bin=$target_dir/debug/shoal ;;
  *) echo "build-image.sh: --profile must be release or debug, got $profile" >&2; exit 2 ;;
esac

stage=cluster/.image
rm -rf "$stage"
mkdir -p "$stage/rootfs/etc/shoal" "$stage/data"
if command -v strip >/dev/null 2>&1; then
  strip -o "$stage/rootfs/shoal" "$bin"
else
  cp "$bin" "$stage/rootfs/shoal"
fi
cp cluster/default-prometheus.yml "$stage/rootfs/etc/shoal/prometheus.yml"

# The loader and every library the binary links, at the paths the host's loader found
# them (a static binary has none).
if ldd "$bin" >/dev/null 2>&1; then
  ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
    while read -r lib; do
      mkdir -p "$stage/rootfs$(dirname "$lib")"
      cp -L "$lib" "$stage/rootfs$lib"
    done
fi

previous=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
echo "== docker build -t $tag ($(du -sh "$stage" | cut -f1) staged)"
docker build -f cluster/Dockerfile -t "$tag" .
# The image this tag named before, now untagged (kept if a container still uses it).
if [ -n "$previous" ] && [ "$previous" != "$(docker image inspect -f '{{.Id}}' "$tag")" ]; then
  docker rmi "$previous" >/dev/null 2>&1 || true
fi
docker image ls "$tag"
