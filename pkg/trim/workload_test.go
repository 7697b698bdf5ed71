package trim

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imashard/imashard/internal/vmtest"
)

// workloadEnv turns on TestInKernelWorkload, which takes minutes under TCG.
// scripts/bench-trim.sh sets it.
const workloadEnv = "IMASHARD_TRIM_WORKLOAD"

// TestInKernelWorkload adds 20,000 measurements in 10 rounds, once with a
// trim after each round and once without, and prints the kernel's entry
// count and binary list size after each round.
func TestInKernelWorkload(t *testing.T) {
	if os.Getenv(workloadEnv) == "" {
		t.Skipf("set %s=1 to run the trimming workload (several minutes)", workloadEnv)
	}
	kernel := vmtest.Kernel(t)
	for _, mode := range []string{"trim", "none"} {
		res, err := vmtest.Run(context.Background(), t, vmtest.Options{
			Kernel:  kernel,
			Package: ".",
			Dir:     ".",
			Timeout: 30 * time.Minute,
			Args:    []string{"-test.v", "-test.timeout=30m", "-test.run=^TestGuestWorkload$", "-workload-mode=" + mode},
		})
		if err != nil {
			if res != nil {
				t.Logf("console:\n%s", res.Console)
			}
			t.Fatal(err)
		}
		rounds := regexp.MustCompile(`workload mode=\S+ round=\d+ .*`).FindAllString(res.Console, -1)
		for _, r := range rounds {
			fmt.Println(r)
		}
		if res.ExitCode != 0 || len(rounds) != 10 {
			t.Fatalf("mode %s: exit %d, %d rounds reported\n%s", mode, res.ExitCode, len(rounds), res.Console)
		}
		last := rounds[len(rounds)-1]
		entries, _ := strconv.Atoi(regexp.MustCompile(`kernel_entries=(\d+)`).FindStringSubmatch(last)[1])
		if mode == "trim" && entries > 2100 {
			t.Errorf("with trimming the kernel holds %d entries after 20,000 measurements, want one round's worth at most", entries)
		}
		if mode == "none" && entries < 20000 {
			t.Errorf("without trimming the kernel holds %d entries, want at least 20,000", entries)
		}
	}
}

var workloadMode = flag.String("workload-mode", "", "trim or none (TestGuestWorkload)")

func TestGuestWorkload(t *testing.T) {
	if *workloadMode == "" || !vmtest.InGuest() {
		t.Skip("started by TestInKernelWorkload")
	}
	g := newGuest(t)
	const rounds, perRound = 10, 2000
	for round := 1; round <= rounds; round++ {
		start := time.Now()
		g.measure(perRound)
		measured := time.Since(start)

		// The snapshot takes the place of a shard: the live part joins history.
		h := g.live()
		if *workloadMode == "trim" {
			if _, err := Trim(g.opts(false), g.shards(len(h))); err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
		count, err := g.fs.Count()
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(filepath.Join(g.fs.IMADir, "binary_runtime_measurements"))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Printf("workload mode=%s round=%d kernel_entries=%d kernel_list_bytes=%d history_entries=%d measure_seconds=%.1f\n",
			*workloadMode, round, count, len(data), len(g.live()), measured.Seconds())
	}
	if st, err := LoadState(g.dir); err == nil {
		t.Logf("final state: %s", strings.TrimSpace(fmt.Sprintf("%+v", *st)))
	}
}
