package qemu_test

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imashard/imashard/qemu/vm"
)

// trimWorkloadEnv turns on TestTrimWorkload, which takes minutes under
// TCG. scripts/bench-trim.sh sets it.
const trimWorkloadEnv = "IMASHARD_TRIM_WORKLOAD"

// TestTrimWorkload adds 20,000 measurements in 10 rounds on the custom
// kernel, once with `snapshot --trim` after each round and once with a
// plain snapshot. Per round it prints the kernel's entry count, the size
// of its binary list, and the history that `verify --live` verifies from
// the quoted shards and the live list.
func TestTrimWorkload(t *testing.T) {
	if os.Getenv(trimWorkloadEnv) == "" {
		t.Skipf("set %s=1 to run the trimming workload (several minutes)", trimWorkloadEnv)
	}
	g := needCustomGuest(t)
	const rounds, perRound = 10, 2000
	for _, mode := range []string{"trim", "none"} {
		trimFlag := ""
		if mode == "trim" {
			trimFlag = "--trim"
		}
		script := fmt.Sprintf(`
mkdir -p /run/imashard /ak
imashard ak export --out /ak > /dev/null
round=0
while [ $round -lt %d ]; do
	round=$((round+1))
	mkdir -p /w$round
	i=0
	while [ $i -lt %d ]; do i=$((i+1)); echo $round-$i > /w$round/f$i; cat /w$round/f$i > /dev/null; done
	imashard snapshot --dir /run/imashard %s > /dev/null
	echo "@@imashard-begin round"
	cat /sys/kernel/security/integrity/ima/runtime_measurements_count
	wc -c < /sys/kernel/security/integrity/ima/binary_runtime_measurements
	imashard verify --live --ak /ak/ak.pem --json /run/imashard
	echo "@@imashard-end round"
done
`, rounds, perRound, trimFlag)
		start := time.Now()
		res := runGuest(t, g, t.TempDir(), g.overlay(script), 40*time.Minute)
		sections := vm.Sections(res.Console, "round")
		if len(sections) != rounds {
			t.Fatalf("mode %s: %d round sections, want %d\n%s", mode, len(sections), rounds, tail(res.Console, 40))
		}
		var last roundResult
		for i, s := range sections {
			r, err := parseRound(s)
			if err != nil {
				t.Fatalf("mode %s round %d: %v\n%s", mode, i+1, err, s)
			}
			fmt.Printf("workload mode=%s round=%d kernel_entries=%d kernel_list_bytes=%d verified_history=%d shards=%d\n",
				mode, i+1, r.kernelEntries, r.listBytes, r.verified, r.shards)
			if r.verified < int64((i+1)*perRound) {
				t.Errorf("mode %s round %d: verify --live verified %d entries, want at least the %d measured", mode, i+1, r.verified, (i+1)*perRound)
			}
			last = r
		}
		fmt.Printf("workload mode=%s guest_seconds=%.0f\n", mode, time.Since(start).Seconds())
		if mode == "trim" && last.kernelEntries > perRound {
			t.Errorf("with trimming the kernel holds %d entries after %d measurements, want one round's worth at most", last.kernelEntries, rounds*perRound)
		}
		if mode == "none" && last.kernelEntries < rounds*perRound {
			t.Errorf("without trimming the kernel holds %d entries, want at least %d", last.kernelEntries, rounds*perRound)
		}
	}
}

type roundResult struct {
	kernelEntries, listBytes, verified int64
	shards                             int
}

// parseRound reads a round section: the kernel's entry count, the list
// size in bytes, then the JSON report of verify --live.
func parseRound(section string) (roundResult, error) {
	var r roundResult
	lines := strings.SplitN(strings.TrimSpace(section), "\n", 3)
	if len(lines) != 3 {
		return r, fmt.Errorf("want a count, a size and a report, got %d lines", len(lines))
	}

	var err error
	if r.kernelEntries, err = strconv.ParseInt(strings.TrimSpace(lines[0]), 10, 64); err != nil {
		return r, fmt.Errorf("entry count: %w", err)
	}
	if r.listBytes, err = strconv.ParseInt(strings.TrimSpace(lines[1]), 10, 64); err != nil {
		return r, fmt.Errorf("list size: %w", err)
	}

	var report struct {
		OK     bool              `json:"ok"`
		Shards []json.RawMessage `json:"shards"`
		Final  *struct {
			NextIndex int64 `json:"next_index"`
		} `json:"final"`
		Live *struct {
			OK       bool  `json:"ok"`
			Attested int64 `json:"attested_entries"`
		} `json:"live"`
	}
	if err := json.Unmarshal([]byte(lines[2]), &report); err != nil {
		return r, fmt.Errorf("verify report: %w", err)
	}
	if !report.OK || report.Final == nil || report.Live == nil || !report.Live.OK {
		return r, fmt.Errorf("verify --live did not verify")
	}
	r.verified = report.Final.NextIndex + report.Live.Attested
	r.shards = len(report.Shards)
	return r, nil
}
