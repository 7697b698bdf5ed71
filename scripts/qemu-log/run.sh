#!/usr/bin/env bash
# Boots a Debian kernel under QEMU with a fresh swtpm and ima_policy=tcb, and
# runs `imashard log replay` in the guest against the TPM's PCR 10 in every
# bank: on the default list, with --bank sha256, and with the PCRs read
# through /dev/tpmrm0. Passes when all three replay to the PCRs.
#
# KERNEL_SUITE picks the kernel: bookworm (default, Linux 6.1) or trixie
# (Linux 6.12), which comes from Debian's archive through a private apt
# configuration that leaves the system's sources alone. Debian's 6.1 kernel
# hashes sha1 and sha256 per bank but extends sha384 and sha512 with the
# padded SHA-1 digest, and has no per-bank lists; 6.12 has the per-bank
# lists, so --bank sha256 must read binary_runtime_measurements_sha256.
# Needs qemu-system-x86, swtpm and cpio. Usage: scripts/qemu-log/run.sh [WORKDIR]
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

suite=${KERNEL_SUITE:-bookworm}
apt_options=()
case $suite in
bookworm) ;;
trixie)
	mkdir -p "$work/apt/lists/partial"
	echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" >"$work/apt/sources.list"
	apt_options=(-o "Dir::Etc::sourcelist=$work/apt/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$work/apt/lists")
	if [ ! -e "$work/apt/updated" ]; then
		apt-get "${apt_options[@]}" update -q >/dev/null
		touch "$work/apt/updated"
	fi
	;;
*)
	echo "qemu-log: unknown KERNEL_SUITE $suite: use bookworm or trixie" >&2
	exit 2
	;;
esac

# Resolve the kernel package at run time: its ABI number moves.
find_kernel_package() {
	apt-cache "${apt_options[@]}" depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'
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
kernel_dir=$work/kernel-$suite
if [ ! -d "$kernel_dir/boot" ]; then
	(cd "$work" && apt-get "${apt_options[@]}" download "$pkg" >/dev/null 2>&1)
	dpkg-deb -x "$work"/"$pkg"_*.deb "$kernel_dir"
fi
kernel=$(ls "$kernel_dir"/boot/vmlinuz-*)

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
if ! grep -q 'IMASHARD-EXIT <nil>' "$work/console.log" || ! grep -q 'IMASHARD-SHA256-EXIT <nil>' "$work/console.log" ||
	! grep -q 'IMASHARD-TPM-EXIT <nil>' "$work/console.log"; then
	echo "qemu-log: log replay did not match the TPM" >&2
	tr -d '\r' <"$work/console.log" | tail -40 >&2
	exit 1
fi
expect() {
	if ! grep -q "$1" "$work/console.log"; then
		echo "qemu-log: expected $1 in the $suite guest's output" >&2
		exit 1
	fi
}
case $suite in
bookworm)
	for rule in '"sha1": "per-bank"' '"sha256": "per-bank"' '"sha384": "padded-sha1"' '"sha512": "padded-sha1"'; do
		expect "$rule"
	done
	;;
trixie)
	expect '"list": "/sys/kernel/security/ima/binary_runtime_measurements_sha256"'
	;;
esac
echo "qemu-log: passed on $pkg"
