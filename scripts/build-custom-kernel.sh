#!/usr/bin/env bash
# Builds the custom x86_64 test kernel (CONFIG_IMA_KEXEC=y,
# CONFIG_IMA_STAGING=y) from Debian sid's linux-source package and caches
# the bzImage outside the clone, keyed by source version and config
# fragment hash, so later runs reuse it.
#
# Usage: scripts/build-custom-kernel.sh [OUT]
#   OUT   where to copy the bzImage (default: bin/kernels/custom/bzImage)
# Environment:
#   KERNEL_SOURCE_PACKAGE   default linux-source-7.2
#   KERNEL_MIRROR           default: the first deb.debian.org-style URI the
#                           system's apt sources use for Debian
#   JOBS                    make -j value (default: nproc)
#   KEEP_SOURCE=1           keep the unpacked source tree (about 2 GB) in
#                           the cache, for reading the kernel's IMA code
# Prints the path of the cached bzImage on standard output.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
fragment="$repo/scripts/kernel/custom.config"
out=${1:-$repo/bin/kernels/custom/bzImage}
package=${KERNEL_SOURCE_PACKAGE:-linux-source-7.2}
jobs=${JOBS:-$(nproc)}
cache_root=${XDG_CACHE_HOME:-$HOME/.cache}/imashard
log() { echo "build-custom-kernel: $*" >&2; }

for tool in apt-get dpkg-deb make gcc flex bison bc xz sha256sum; do
	if ! command -v "$tool" >/dev/null; then
		log "missing tool $tool: run 'make deps' as root (it installs the kernel build dependencies)"
		exit 1
	fi
done

# The mirror is the Debian archive the machine already uses, so the build
# works where only that archive is reachable.
mirror=${KERNEL_MIRROR:-}
if [ -z "$mirror" ]; then
	mirror=$(grep -rhoE '(URIs:|deb)[[:space:]]+https?://[^[:space:]]+/debian/?([[:space:]]|$)' \
		/etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null |
		grep -oE 'https?://[^[:space:]]+' | head -n1 || true)
fi
if [ -z "$mirror" ]; then
	log "no Debian archive found in /etc/apt/sources.list*: set KERNEL_MIRROR=URL"
	exit 1
fi

# A private apt configuration for sid, so the system's sources stay as they are.
apt_dir="$cache_root/apt-sid"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror sid main" >"$apt_dir/sources.list"
apt_opts=(
	-o "Dir::Etc::sourcelist=$apt_dir/sources.list"
	-o "Dir::Etc::sourceparts=-"
	-o "Dir::State::Lists=$apt_dir/lists"
	-o "Dir::Cache::archives=$apt_dir/archives"
	-o "APT::Get::List-Cleanup=0"
)
fragment_hash=$(grep -vE '^[[:space:]]*$' "$fragment" | sha256sum | cut -c1-16)

log "updating the private sid package list from $mirror"
if ! apt-get "${apt_opts[@]}" -q update >&2; then
	# Offline: a kernel built earlier from the same fragment will do.
	cached=$(ls -t "$cache_root"/kernels/custom-*-"$fragment_hash"/bzImage 2>/dev/null | head -n1 || true)
	if [ -n "$cached" ]; then
		log "apt-get update failed; reusing $cached"
		mkdir -p "$(dirname "$out")"
		cp "$cached" "$out"
		echo "$cached"
		exit 0
	fi
	log "apt-get update failed and no kernel for this fragment is cached"
	exit 1
fi

version=$(apt-cache "${apt_opts[@]}" show "$package" 2>/dev/null |
	awk '/^Version:/ {print $2; exit}')
if [ -z "$version" ]; then
	log "package $package not found in sid at $mirror: set KERNEL_SOURCE_PACKAGE to a linux-source-X.Y that sid has"
	exit 1
fi

key="custom-$version-$fragment_hash"
cached="$cache_root/kernels/$key/bzImage"

if [ -s "$cached" ]; then
	log "reusing $cached"
else
	# The source tree is keyed by version only, so a changed fragment
	# rebuilds incrementally when KEEP_SOURCE=1 kept the tree.
	work="$cache_root/build/linux-source-$version"
	start=$(date +%s)
	if ! ls "$work"/linux-source-*/Makefile >/dev/null 2>&1; then
		rm -rf "$work"
		mkdir -p "$work"
		log "downloading $package $version"
		(cd "$apt_dir/archives" && apt-get "${apt_opts[@]}" -q download "$package=$version" >&2)
		deb=$(find "$apt_dir/archives" -maxdepth 1 -name "${package}_*.deb" | head -n1)
		dpkg-deb -x "$deb" "$work/pkg"
		tarball=$(find "$work/pkg/usr/src" -maxdepth 1 -name 'linux-source-*.tar.*' | head -n1)
		if [ -z "$tarball" ]; then
			log "$package $version has no linux-source tarball under /usr/src"
			exit 1
		fi
		log "unpacking $(basename "$tarball")"
		tar -C "$work" -xf "$tarball"
		rm -rf "$work/pkg"
	else
		log "reusing the source tree in $work"
	fi
	src=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'linux-source-*' | head -n1)

	# tinyconfig alone drops 64BIT when ARCH is not given explicitly, and
	# olddefconfig silently drops options whose dependencies are missing,
	# so every fragment line is checked against the final .config.
	make -C "$src" -s ARCH=x86_64 tinyconfig >&2
	"$src/scripts/kconfig/merge_config.sh" -m -O "$src" "$src/.config" "$fragment" >&2
	make -C "$src" -s ARCH=x86_64 olddefconfig >&2
	missing=0
	while IFS= read -r line; do
		case "$line" in
		CONFIG_*=*) ;;
		"# CONFIG_"*" is not set") ;;
		*) continue ;;
		esac
		option=${line#\# }
		option=${option%% *}
		option=${option%%=*}
		if [[ "$line" == "# "* ]]; then
			if grep -qE "^$option=" "$src/.config"; then
				log "config line did not take: '$line' but the final config has $(grep -E "^$option=" "$src/.config")"
				missing=1
			fi
		elif ! grep -qxF "$line" "$src/.config"; then
			log "config line did not take: '$line' (final: $(grep -E "^(# )?$option[= ]" "$src/.config" || echo absent))"
			missing=1
		fi
	done <"$fragment"
	if [ "$missing" -ne 0 ]; then
		log "fix scripts/kernel/custom.config: add the missing dependencies of the options above"
		exit 1
	fi

	log "building bzImage with make -j$jobs"
	make -C "$src" -s ARCH=x86_64 -j"$jobs" bzImage >&2
	mkdir -p "$(dirname "$cached")"
	cp "$src/arch/x86/boot/bzImage" "$cached.tmp"
	cp "$src/.config" "$(dirname "$cached")/config"
	mv "$cached.tmp" "$cached"
	end=$(date +%s)
	log "built $key in $((end - start)) s"

	# The source tree is about 2 GB; keep only the kernel and its config.
	if [ "${KEEP_SOURCE:-0}" != 1 ]; then
		rm -rf "$work"
	fi
fi

mkdir -p "$(dirname "$out")"
cp "$cached" "$out"
echo "$cached"
