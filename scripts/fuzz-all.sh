#!/usr/bin/env bash
# Runs every Fuzz target in the module with the given -fuzztime each: a
# duration such as 10s or an execution count such as 50000x (the default).
# go test accepts -fuzz for one package and one target at a time, so this
# lists them and runs them one after another.
set -euo pipefail

fuzztime=${1:-50000x}
cd "$(dirname "$0")/.."

found=0
while read -r pkg; do
	dir=$(go list -f '{{.Dir}}' "$pkg")
	for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //'); do
		found=$((found + 1))
		echo "fuzz: $pkg $target for $fuzztime"
		go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg"
	done
done < <(go list ./...)

echo "fuzz: ran $found targets"
