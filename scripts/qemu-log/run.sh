#!/usr/bin/env bash
# Boots Debian's bookworm kernel (6.1) under QEMU with a fresh swtpm and
# ima_policy=tcb, and runs `imashard log replay` in the guest against the
# TPM's PCR 10 in every bank. Passes when the live list replays to the PCRs
# of all four banks. Debian's 6.1 kernel hashes sha1 and sha256 per bank but
# extends sha384 and sha512 with the padded SHA-1 digest, so the report must
# show both rules. Needs qemu-system-x86, swtpm, cpio and apt access to
# Debian's archive. Usage: scripts/qemu-log/run.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/../.."

work=${1:-}
cleanup_work=false
if [ -z "$work" ]; then
	work=$(mktemp -d)
	cleanup_work=true
fi
mkdir -p "$work"
work=$(cd "$work" && pwd)

# Resolve the kernel package at run time: its ABI number moves.
find_kernel_package() {
	apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'
}
pkg=$(find_kernel_package)
if [ -z "$pkg" ] && [ "$(id -u)" -eq 0 ]; then
	apt-get update -q >/dev/null
	pkg=$(find_kernel_package)
fi
if [ -z "$pkg" ]; then
	echo "qemu-log: no linux-image package found; run apt-get update" >&2
	exit 1
fi
if [ ! -d "$work/kernel/boot" ]; then
	(cd "$work" && apt-get download "$pkg" >/dev/null 2>&1)
	dpkg-deb -x "$work"/"$pkg"_*.deb "$work/kernel"
fi
kernel=$(ls "$work"/kernel/boot/vmlinuz-*)

# The initramfs contains a Go init and a static imashard.
root=$work/root
rm -rf "$root"
mkdir -p "$root"
CGO_ENABLED=0 go build -trimpath -o "$root/init" ./scripts/qemu-log/init
CGO_ENABLED=0 go build -trimpath -o "$root/imashard" ./cmd/imashard
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1 >"$work/initrd.gz")

state=$work/tpm
rm -rf "$state"
mkdir -p "$state"
swtpm socket --tpm2 --tpmstate dir="$state" --ctrl type=unixio,path="$state/swtpm.sock" --terminate &
swtpm_pid=$!
cleanup() {
	kill "$swtpm_pid" 2>/dev/null || true
	if $cleanup_work; then
		rm -rf "$work"
	fi
}
trap cleanup EXIT
for _ in $(seq 50); do
	[ -S "$state/swtpm.sock" ] && break
	sleep 0.1
done

timeout 300 qemu-system-x86_64 -accel tcg -m 1024 -nographic -no-reboot -nic none \
	-kernel "$kernel" -initrd "$work/initrd.gz" \
	-append "console=ttyS0 panic=-1 ima_policy=tcb rootfstype=ramfs quiet" \
	-chardev socket,id=chrtpm,path="$state/swtpm.sock" -tpmdev emulator,id=tpm0,chardev=chrtpm \
	-device tpm-tis,tpmdev=tpm0 >"$work/console.log" 2>&1 || true

sed -n '/IMASHARD-BEGIN/,/IMASHARD-EXIT/p' "$work/console.log" | tr -d '\r'
if ! grep -q 'IMASHARD-EXIT <nil>' "$work/console.log" || ! grep -q 'IMASHARD-SHA256-EXIT <nil>' "$work/console.log"; then
	echo "qemu-log: log replay did not match the TPM" >&2
	tr -d '\r' <"$work/console.log" | tail -40 >&2
	exit 1
fi
for rule in '"sha1": "per-bank"' '"sha256": "per-bank"' '"sha384": "padded-sha1"' '"sha512": "padded-sha1"'; do
	if ! grep -q "$rule" "$work/console.log"; then
		echo "qemu-log: expected the bank rule $rule for Debian's 6.1 kernel" >&2
		exit 1
	fi
done
echo "qemu-log: passed"
