#!/usr/bin/env bash
# Builds the container image: `scripts/setup --image [cpu|cuda] [--tag NAME] [--no-check]`
# runs this (docs/deploy.md). Podman, else Docker; on Debian without either, installs podman.
#
# Base image: $MLX_SERVE_BASE_IMAGE, else Debian 12 slim from the image registry, else (no
# registry reachable, as on the development machines) a Debian 12 tree made by debootstrap
# from the Debian mirror apt already uses, imported as localhost/mlx-serve-debian:bookworm.
#
# After a CPU build the image is checked (unless --no-check): all-MiniLM-L6-v2 from .deps/
# is imported into a fresh volume with `mlx-serve pull`, the container serves an embedding,
# runs as uid 10001, its HEALTHCHECK passes, and SIGTERM stops it with exit code 0.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'setup --image: %s\n' "$*" >&2; exit 1; }

FLAVOR=cpu TAG="" CHECK=true
while [ $# -gt 0 ]; do
  case "$1" in
    cpu|cuda) FLAVOR=$1;;
    --tag) TAG=${2:?--tag needs a name}; shift;;
    --no-check) CHECK=false;;
    *) die "unknown argument $1 (expected cpu, cuda, --tag NAME, --no-check)";;
  esac
  shift
done
TAG=${TAG:-localhost/mlx-serve:$FLAVOR}
CONTAINERFILE=deploy/image/Containerfile BASE_ARG=BASE_IMAGE
# The CUDA image builds on Debian too but runs on NVIDIA's CUDA runtime image (its own ARG).
[ "$FLAVOR" = cuda ] && CONTAINERFILE=deploy/image/Containerfile.cuda BASE_ARG=BUILD_IMAGE

apt_install() {
  local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
}

if command -v podman >/dev/null; then ENGINE=podman
elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then ENGINE=docker
elif command -v apt-get >/dev/null; then say "apt-get install podman"; apt_install podman buildah; ENGINE=podman
else die "no container engine: install podman or docker"; fi


base_image() {
  if [ -n "${MLX_SERVE_BASE_IMAGE:-}" ]; then echo "$MLX_SERVE_BASE_IMAGE"; return; fi
  local local_base=localhost/mlx-serve-debian:bookworm
  if $ENGINE pull -q docker.io/library/debian:bookworm-slim >/dev/null 2>&1; then
    echo "docker.io/library/debian:bookworm-slim"; return
  fi
  if ! $ENGINE image exists "$local_base" 2>/dev/null; then
    say "no image registry: making $local_base with debootstrap" >&2
    command -v debootstrap >/dev/null || apt_install debootstrap >&2
    local mirror tree
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$mirror" ] || die "no Debian mirror in the apt sources for debootstrap"
    tree=$(mktemp -d)
    debootstrap --variant=minbase bookworm "$tree" "$mirror" >&2
    # The host's apt sources (with bookworm-updates and -security, as the registry's image
    # has), not debootstrap's single line.
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
      rm -f "$tree/etc/apt/sources.list" && cp /etc/apt/sources.list.d/debian.sources "$tree/etc/apt/sources.list.d/"
    fi
    rm -rf "$tree"/var/cache/apt/archives/*.deb "$tree"/var/lib/apt/lists/*
    tar -C "$tree" -c . | $ENGINE import - "$local_base" >&2
    rm -rf "$tree"
  fi
  echo "$local_base"
}

BASE=$(base_image)

# Options the containers need where podman's defaults fail, found by trying: in a sandbox
# without CAP_SYS_RESOURCE the OCI runtime may not set podman's default resource limits
# (keep the shell's open-files limit, cap processes at 4096); where crun refuses the
# cgroup layout (cgroup v1 + v2 "hybrid"), runc works.
RUN_OPTS=()
probe() { $ENGINE run --rm --network none "${RUN_OPTS[@]}" "$BASE" true >/dev/null 2>&1; }
if [ "$ENGINE" = podman ] && ! probe; then
  RUN_OPTS=(--ulimit "nofile=$(ulimit -Sn):$(ulimit -Hn)" --ulimit "nproc=4096:4096")
  if ! probe; then
    command -v runc >/dev/null || { say "apt-get install runc" >&2; apt_install runc; }
    RUN_OPTS+=(--runtime runc)
    probe || { $ENGINE run --rm --network none "${RUN_OPTS[@]}" "$BASE" true; die "podman cannot run a container here"; }
  fi
  echo "podman options here: ${RUN_OPTS[*]}"
fi

say "$ENGINE build $TAG from $CONTAINERFILE (base $BASE)"
BUILD_OPTS=(--network host -f "$CONTAINERFILE" --build-arg "$BASE_ARG=$BASE" -t "$TAG")
# HEALTHCHECK is a Docker-format field; podman writes OCI images unless told otherwise.
[ "$ENGINE" = podman ] && BUILD_OPTS+=(--format docker "${RUN_OPTS[@]}")
# The host's CA bundle as a build secret (not stored in the image): where a TLS proxy
# re-signs traffic (these development machines), the build stage's downloads need it.
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
[ -f "$CA_BUNDLE" ] && BUILD_OPTS+=(--secret "id=site-ca,src=$CA_BUNDLE")
$ENGINE build "${BUILD_OPTS[@]}" .
say "built $TAG ($($ENGINE image inspect --format '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1 / 1e6}'))"

[ "$FLAVOR" = cpu ] && [ "$CHECK" = true ] || exit 0

# The check: what a user does with the image, without a network (the model comes from .deps/).
model=$(readlink -f .deps/all-MiniLM-L6-v2 2>/dev/null || true)
[ -f "$model/model.safetensors" ] || die "no .deps/all-MiniLM-L6-v2 to check the image with (run scripts/setup)"
name=mlx-serve-check-$$ volume=mlx-serve-check-$$
cleanup() { $ENGINE rm -f "$name" >/dev/null 2>&1 || true; $ENGINE volume rm -f "$volume" >/dev/null 2>&1 || true; }
trap cleanup EXIT
$ENGINE volume create "$volume" >/dev/null
say "check: import the model into the volume"
$ENGINE run --rm --network none "${RUN_OPTS[@]}" -v "$model:/import:ro" -v "$volume:/var/lib/mlx-serve" \
  "$TAG" pull /import --name all-MiniLM-L6-v2
say "check: serve it"
$ENGINE run -d --name "$name" --network none "${RUN_OPTS[@]}" -v "$volume:/var/lib/mlx-serve" \
  -e MLX_SERVE_PRELOAD_MODELS=all-MiniLM-L6-v2 "$TAG" >/dev/null
for _ in $(seq 60); do
  $ENGINE exec "$name" curl -fsS http://127.0.0.1:8000/ready >/dev/null 2>&1 && break
  sleep 1   # polling the server's start-up; each try is a real request
done
reply=$($ENGINE exec "$name" curl -fsS http://127.0.0.1:8000/v1/embeddings -H 'content-type: application/json' \
  -d '{"model": "all-MiniLM-L6-v2", "input": ["hello world", "bonjour le monde"]}')
python3 -c 'import json, sys; d = json.loads(sys.argv[1])["data"]; assert len(d) == 2 and len(d[0]["embedding"]) == 384, d; print("embeddings: 2 x 384")' "$reply"
uid=$($ENGINE exec "$name" id -u)
[ "$uid" = 10001 ] || die "the server runs as uid $uid, not 10001"
echo "user: uid $uid"
$ENGINE healthcheck run "$name" >/dev/null 2>&1 || [ "$ENGINE" = docker ] || die "HEALTHCHECK failed"
echo "healthcheck: healthy"
$ENGINE stop -t 60 "$name" >/dev/null
code=$($ENGINE inspect --format '{{.State.ExitCode}}' "$name")
[ "$code" = 0 ] || die "SIGTERM: exit code $code"
echo "SIGTERM: exit code 0"
say "image $TAG checked"
