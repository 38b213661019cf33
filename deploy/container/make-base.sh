#!/usr/bin/env bash
# A local stand-in for docker.io/library/python:3.11-slim-bookworm, built from Debian packages, for
# machines where no registry serves base images: Debian bookworm (minbase) with python3 (3.11),
# python3-venv and ca-certificates, imported as localhost/python-base:3.11-bookworm.
#
#   deploy/container/make-base.sh [IMAGE]      (or: make base-image)
#
# Needs root (debootstrap), debootstrap and podman (or docker: ENGINE=docker). MIRROR picks the
# Debian mirror (default: http://deb.debian.org/debian).
set -euo pipefail

IMAGE=${1:-localhost/python-base:3.11-bookworm}
ENGINE=${ENGINE:-$(command -v podman || command -v docker || true)}
SUITE=bookworm
MIRROR=${MIRROR:-http://deb.debian.org/debian}

[ "$(id -u)" = 0 ] || { echo "make-base.sh: debootstrap needs root" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "make-base.sh: install debootstrap (apt-get install debootstrap)" >&2; exit 1; }
[ -n "$ENGINE" ] || { echo "make-base.sh: no podman or docker on the PATH" >&2; exit 1; }

root=$(mktemp -d /var/tmp/python-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
started=$(date +%s)
echo "debootstrap $SUITE (minbase) from $MIRROR into $root"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 || { tail -n 30 "$root.log" >&2; exit 1; }
rm -f "$root.log"
# What the image does not need: package lists, caches, docs, man pages, locales but C.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/log/*
"$root"/usr/bin/python3 --version
tar -C "$root" --numeric-owner -c . | "$ENGINE" import \
    --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' - "$IMAGE" >/dev/null
echo "built $IMAGE in $(($(date +%s) - started)) s"
"$ENGINE" image ls "$IMAGE"
