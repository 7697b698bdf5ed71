#!/usr/bin/env bash
# Runs the trimming workload in the custom kernel under QEMU: 20,000
# measurements in 10 rounds, with a trim after each round and without, and
# prints the kernel's entry count and list size per round. Takes several
# minutes under TCG. Results go to docs/benchmarks.md by hand.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
kernel=$("$repo/scripts/build-custom-kernel.sh" "$repo/bin/kernels/custom/bzImage")
cd "$repo"
IMASHARD_TRIM_WORKLOAD=1 IMASHARD_CUSTOM_KERNEL="$kernel" \
	go test -count=1 -timeout 70m -run '^TestInKernelWorkload$' -v ./pkg/trim/ |
	grep -E '^(workload|--- |ok|FAIL)'
