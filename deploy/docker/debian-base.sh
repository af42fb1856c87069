#!/bin/sh
# A Debian bookworm base image made from Debian's packages with debootstrap, for machines
# that reach a Debian mirror but no image registry. Then build raylm's CPU image on it:
#
#   deploy/docker/debian-base.sh
#   podman build -f deploy/docker/Dockerfile.cpu --build-arg BASE=localhost/raylm-debian:bookworm -t raylm-cpu .
#
# Needs root, debootstrap, and podman (or CONTAINER=docker).
set -eu
tag=${1:-localhost/raylm-debian:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
engine=${CONTAINER:-podman}
root=$(mktemp -d /var/tmp/raylm-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$root" "$mirror"
# The image's apt reads the same mirror the machine does.
echo "deb $mirror bookworm main" > "$root/etc/apt/sources.list"
tar -C "$root" -c . | "$engine" import - "$tag"
echo "$tag"
