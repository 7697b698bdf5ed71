#!/usr/bin/env bash
# Builds a u-root initramfs (uncompressed newc cpio) with u-root's core
# commands used by the scenarios and imashard itself, compiled together into
# one busybox-style binary by gobusybox. The u-root version is the one
# pinned in go.mod, run with `go tool`, so the build needs no network but
# the Go module proxy.
#
# Usage: scripts/build-initramfs.sh OUTPUT
set -euo pipefail

out=${1:?usage: build-initramfs.sh OUTPUT}
cd "$(dirname "$0")/.."

core=github.com/u-root/u-root/cmds/core
cmds=()
for c in init gosh ls cat cp mkdir mount echo dmesg kexec shutdown sleep cmp base64 sync dd wc rm; do
	cmds+=("$core/$c")
done

mkdir -p "$(dirname "$out")"
# gosh runs /etc/imashard/init.sh as /bin/uinit once u-root's init has
# mounted proc, sysfs, devtmpfs and securityfs.
CGO_ENABLED=0 go tool u-root \
	-o "$out.tmp" \
	-uinitcmd="gosh /etc/imashard/init.sh" \
	-defaultsh gosh \
	-files initramfs/init.sh:etc/imashard/init.sh \
	"${cmds[@]}" ./cmd/imashard
mv "$out.tmp" "$out"
echo "build-initramfs: $out ($(stat -c %s "$out") bytes)" >&2
