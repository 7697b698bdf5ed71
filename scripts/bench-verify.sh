#!/usr/bin/env bash
# Measures snapshot and `imashard verify` time and peak memory on one-shard
# chains of the given entry counts (default: 10000 100000). The snapshot
# figure is the peak RSS of the test process that extends swtpm and then
# snapshots all entries at once. Each chain is made against a
# fresh swtpm, which takes most of the run time (1,000,000 entries took 75 s
# on a 2-core VM). Needs swtpm and /usr/bin/time (Debian package "time").
set -euo pipefail

cd "$(dirname "$0")/.."
sizes=("$@")
if [ ${#sizes[@]} -eq 0 ]; then
	sizes=(10000 100000)
fi
if [ ! -x /usr/bin/time ]; then
	echo "bench-verify: /usr/bin/time not found: apt-get install time" >&2
	exit 1
fi

make build >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
go test -c -o "$work/shard.test" ./pkg/shard

for n in "${sizes[@]}"; do
	dir="$work/$n"
	(cd pkg/shard && IMASHARD_BENCH_DIR="$dir" IMASHARD_BENCH_ENTRIES="$n" \
		/usr/bin/time -f "%M" -o "$work/snaptime" "$work/shard.test" -test.run '^TestWriteBenchChain$' -test.timeout 60m >/dev/null 2>&1)
	read -r snaprss <"$work/snaptime"
	size=$(stat -c %s "$dir"/chain/shard-*.ims)
	/usr/bin/time -f "%e %M" -o "$work/time" bin/imashard verify --ak "$dir/ak.pem" "$dir/chain" >/dev/null
	read -r seconds maxrss <"$work/time"
	echo "entries=$n shard_bytes=$size snapshot_max_rss_kib=$snaprss verify_seconds=$seconds verify_max_rss_kib=$maxrss"
done
