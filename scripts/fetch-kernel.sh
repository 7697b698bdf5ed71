#!/usr/bin/env bash
# Downloads Debian's stock amd64 kernel image package and extracts it into a
# cache directory outside the clone. Nothing is installed into /boot.
#
#   KERNEL_SUITE=bookworm (default) uses the system's apt sources.
#   KERNEL_SUITE=trixie|sid uses a private apt configuration, so the system's
#   sources and lists stay untouched.
#
# Prints the path of the extracted vmlinuz on standard output; the version is
# written beside it in a file named "version".
set -euo pipefail

suite=${KERNEL_SUITE:-bookworm}
cache=${IMASHARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/imashard}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

apt_opts=()
if [ "$suite" != "bookworm" ]; then
	# A private sources list and list directory: apt-get update with these
	# options writes only under $cache/apt-$suite.
	aptdir=$cache/apt-$suite
	mkdir -p "$aptdir/lists/partial"
	echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main" >"$aptdir/sources.list"
	apt_opts=(-o "Dir::Etc::sourcelist=$aptdir/sources.list" -o "Dir::Etc::sourceparts=-" -o "Dir::State::Lists=$aptdir/lists")
	echo "fetch-kernel: apt-get update for $suite (private lists in $aptdir)" >&2
	apt-get "${apt_opts[@]}" update -q >&2
elif ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
	echo "fetch-kernel: no apt lists yet, running apt-get update" >&2
	apt-get update -q >&2
fi

# The metapackage depends on exactly one versioned image package, which is
# resolved now because the version moves with every Debian point release.
pkg=$(apt-cache "${apt_opts[@]}" depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$pkg" ]; then
	echo "fetch-kernel: cannot resolve linux-image-amd64 in suite $suite" >&2
	exit 1
fi
ver=${pkg#linux-image-}

# Since Debian's 6.13-era packaging the image may live in
# linux-binary-<ver>, with linux-image-<ver> only depending on it.
binpkg=$(apt-cache "${apt_opts[@]}" depends "$pkg" 2>/dev/null | awk '/Depends: linux-binary-/ {print $2; exit}')
fetch=${binpkg:-$pkg}

dest=$cache/kernels/$suite/$ver
if [ -s "$dest/vmlinuz" ]; then
	echo "fetch-kernel: $suite kernel $ver already in $dest" >&2
	echo "$dest/vmlinuz"
	exit 0
fi

work=$(mktemp -d)
# apt-get download drops privileges to _apt, which needs to write here.
chmod 755 "$work"
trap 'rm -rf "$work"' EXIT
echo "fetch-kernel: downloading $fetch ($suite)" >&2
(cd "$work" && apt-get "${apt_opts[@]}" download -q "$fetch" >&2)
dpkg-deb -x "$work"/*.deb "$work/root"

img=""
for candidate in "$work/root/boot/vmlinuz-$ver" "$work/root/usr/lib/modules/$ver/vmlinuz" "$work/root/lib/modules/$ver/vmlinuz"; do
	if [ -s "$candidate" ]; then
		img=$candidate
		break
	fi
done
if [ -z "$img" ]; then
	echo "fetch-kernel: no vmlinuz for $ver in $fetch; contents:" >&2
	find "$work/root" -maxdepth 5 -name 'vmlinuz*' >&2
	exit 1
fi

mkdir -p "$dest"
cp "$img" "$dest/vmlinuz.tmp"
mv "$dest/vmlinuz.tmp" "$dest/vmlinuz"
echo "$ver" >"$dest/version"
echo "$fetch" >"$dest/package"
echo "fetch-kernel: $suite kernel $ver in $dest/vmlinuz" >&2
echo "$dest/vmlinuz"
