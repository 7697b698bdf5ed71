#!/usr/bin/env bash
# Runs the trimming workload in the custom kernel under QEMU: 20,000
# measurements in 10 rounds, with `imashard snapshot --trim` after each
# round and with a plain snapshot, and prints per round the kernel's entry
# count, its list size, and the history that `imashard verify --live`
# verifies from the quoted shards. Takes several minutes under TCG.
# Results go to docs/benchmarks.md by hand.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
kernel=$("$repo/scripts/build-custom-kernel.sh" "$repo/bin/kernels/custom/bzImage")
"$repo/scripts/build-initramfs.sh" "$repo/bin/initramfs.cpio"
IMASHARD_TRIM_WORKLOAD=1 IMASHARD_CUSTOM_KERNEL="$kernel" IMASHARD_INITRAMFS="$repo/bin/initramfs.cpio" \
	go test -count=1 -timeout 90m -run '^TestTrimWorkload$' -v ./qemu/ |
	grep -E '^(workload|--- |ok|FAIL)'
