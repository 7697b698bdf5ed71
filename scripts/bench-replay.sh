#!/usr/bin/env bash
# Compares `imashard log replay` with `evmctl ima_measurement` on a
# generated 1,000,000-entry ima-ng list (sha1 + sha256 PCR 10 targets), with
# `sha256sum` of the list as a floor. Prints wall time, peak RSS and the
# speed ratio. Usage: scripts/bench-replay.sh [ENTRIES] (default 1000000).
# RUNS sets the number of rounds, each running every tool once (default 5).
# The script prints each tool's median wall and user time and its maximum
# RSS, because single runs on a shared machine vary by about 10 %.
# BENCH_DIR sets where the list goes (default: a new temporary directory,
# removed at the end).
set -euo pipefail

entries=${1:-1000000}
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/time ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "bench-replay: /usr/bin/time is missing; install the 'time' package" >&2
		exit 1
	fi
	apt-get install -y time >/dev/null
fi
if ! command -v evmctl >/dev/null; then
	echo "bench-replay: evmctl is missing; install ima-evm-utils (make deps)" >&2
	exit 1
fi

dir=${BENCH_DIR:-}
if [ -z "$dir" ]; then
	dir=$(mktemp -d)
	trap 'rm -rf "$dir"' EXIT
fi

make -s build
go run ./scripts/genlog -entries "$entries" -out "$dir"
list=$dir/binary_runtime_measurements
pcrs=(--pcrs "sha1,$dir/pcrs-sha1.txt" --pcrs "sha256,$dir/pcrs-sha256.txt")

# measure NAME COMMAND...: runs the command under /usr/bin/time -v and
# prints "NAME wall_seconds user_seconds kbytes"; the command must exit 0.
measure() {
	local name=$1
	shift
	local report
	report=$(mktemp)
	if ! /usr/bin/time -v -o "$report" "$@" >/dev/null 2>"$report.err"; then
		echo "bench-replay: $name failed:" >&2
		cat "$report.err" "$report" >&2
		exit 1
	fi
	local wall user rss
	user=$(awk -F': ' '/User time/ {print $2}' "$report")
	wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2, t, ":"); s=0; for (i=1; i<=n; i++) s=s*60+t[i]; print s}' "$report")
	rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$report")
	rm -f "$report" "$report.err"
	echo "$name $wall $user $rss"
}

# Warm the page cache so that every tool reads the list from memory.
cat "$list" >/dev/null

echo "list: $list ($(stat -c %s "$list") bytes, $entries entries)"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load $(cut -d' ' -f1-3 /proc/loadavg)"
runs=${RUNS:-5}
if ! [[ $runs =~ ^[1-9][0-9]*$ ]]; then
	echo "bench-replay: RUNS=$runs is invalid: set it to a positive number of rounds" >&2
	exit 1
fi
echo "rounds: $runs, each tool once a round; medians of wall and user time, maximum of RSS"

tools=(sha256sum imashard evmctl)
declare -A lines
for ((round = 1; round <= runs; round++)); do
	lines[sha256sum]+="$(measure sha256sum sha256sum "$list")"$'\n'
	lines[imashard]+="$(measure imashard bin/imashard log replay "${pcrs[@]}" "$list")"$'\n'
	lines[evmctl]+="$(measure evmctl evmctl ima_measurement "${pcrs[@]}" "$list")"$'\n'
done

# summarize NAME: prints "NAME median_wall median_user max_rss min_wall
# max_wall" from the lines of measure.
summarize() {
	printf '%s' "${lines[$1]}" | awk -v name="$1" '
		NF == 4 { n++; wall[n] = $2; user[n] = $3; if ($4 > rss) rss = $4 }
		function median(a,    i, j, t) {
			for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
			return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
		}
		END { m = median(wall); lo = wall[1]; hi = wall[n]; printf "%s %.2f %.2f %d %.2f %.2f\n", name, m, median(user), rss, lo, hi }'
}

printf '%-10s %8s %8s %12s %14s\n' tool wall_s user_s peak_rss_kB wall_range_s
results=()
for tool in "${tools[@]}"; do
	results+=("$(summarize "$tool")")
done
for r in "${results[@]}"; do
	read -r name wall user rss lo hi <<<"$r"
	printf '%-10s %8s %8s %12s %14s\n' "$name" "$wall" "$user" "$rss" "$lo-$hi"
done

imashard_s=$(echo "${results[1]}" | cut -d' ' -f2)
evmctl_s=$(echo "${results[2]}" | cut -d' ' -f2)
imashard_user=$(echo "${results[1]}" | cut -d' ' -f3)
evmctl_user=$(echo "${results[2]}" | cut -d' ' -f3)
imashard_rss=$(echo "${results[1]}" | cut -d' ' -f4)
awk -v a="$evmctl_s" -v b="$imashard_s" 'BEGIN { if (b > 0) printf "speed ratio (median wall time): imashard is %.1fx faster than evmctl\n", a / b }'
awk -v a="$evmctl_user" -v b="$imashard_user" 'BEGIN { if (b > 0) printf "CPU ratio (median user time): evmctl uses %.1fx the CPU time of imashard\n", a / b }'
if [ "$imashard_rss" -ge 16384 ]; then
	echo "bench-replay: imashard peak RSS ${imashard_rss} kB is over the 16 MB target" >&2
fi
