#!/usr/bin/env bash
# Installs the Debian packages that the build, the tests and the demo need.
# Runs apt-get only when a package is missing, and only as root; otherwise it
# prints the command to run.
set -euo pipefail

packages=(qemu-system-x86 swtpm swtpm-tools tpm2-tools ima-evm-utils cpio ca-certificates)
# Building the custom test kernel (scripts/build-custom-kernel.sh).
packages+=(build-essential flex bison bc libelf-dev libssl-dev xz-utils)

missing=()
for p in "${packages[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("$p")
	fi
done

if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps: missing packages: ${missing[*]}" >&2
	echo "install-deps: run as root: apt-get install ${missing[*]}" >&2
	exit 1
fi

echo "install-deps: installing ${missing[*]}" >&2
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
