#!/usr/bin/env bash
# Measures the kexec handoff: the size of the static binary and of the
# initramfs, and `imashard kexec --dry-run` on a generated log against swtpm
# next to the floor (cat of the log plus one tpm2_quote).
#
# Usage: scripts/bench-kexec.sh [ENTRIES]   (default 100000)
# Needs: make build initramfs kernel (run by this script), swtpm, tpm2-tools.
set -euo pipefail
cd "$(dirname "$0")/.."

entries=${1:-100000}
make -s build initramfs kernel >&2
kernel=$(cat bin/kernel-${KERNEL_SUITE:-bookworm}.path)

echo "## kexec handoff"
echo
echo "Machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%d GB", $2/1048576}' /proc/meminfo), $(uname -r), $(go version | cut -d' ' -f3)."
echo "Command: scripts/bench-kexec.sh $entries ($(date -u +%Y-%m-%d))."
echo
echo "| artifact | bytes |"
echo "| --- | --- |"
echo "| bin/imashard (static, stripped) | $(stat -c %s bin/imashard) |"
echo "| bin/initramfs.cpio (u-root core subset + imashard, uncompressed) | $(stat -c %s bin/initramfs.cpio) |"
echo
go run ./scripts/benchkexec -entries "$entries" -imashard bin/imashard -kernel "$kernel" -initrd bin/initramfs.cpio
