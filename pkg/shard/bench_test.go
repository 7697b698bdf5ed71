package shard

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/imashard/imashard/pkg/imalog"
)

// benchShard writes a one-shard chain of n entries, cycling through the
// corpus list, against a fresh swtpm. Extending swtpm dominates the setup.
func benchShard(b testing.TB, n int) (*testEnv, string) {
	b.Helper()
	env := newTestEnv(b)
	src := readTestEntries(b, "sha1.log.bin")
	batch := make([]*imalog.Entry, 0, 1024)
	for i := 0; i < n; i++ {
		batch = append(batch, src[i%len(src)])
		if len(batch) == cap(batch) || i == n-1 {
			env.measure(batch...)
			batch = batch[:0]
		}
	}
	res, err := env.snapshot(false)
	if err != nil {
		b.Fatal(err)
	}
	return env, res.Path
}

func BenchmarkVerify(b *testing.B) {
	for _, n := range []int{1000, 20000} {
		b.Run(fmt.Sprintf("entries=%d", n), func(b *testing.B) {
			env, path := benchShard(b, n)
			info, err := os.Stat(path)
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(info.Size())
			b.ReportAllocs()
			b.ResetTimer()

			for i := 0; i < b.N; i++ {
				if _, err := env.verify(env.dir); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/entry")
		})
	}
}

// TestWriteBenchChain writes a one-shard chain of IMASHARD_BENCH_ENTRIES
// entries and its AK PEM into IMASHARD_BENCH_DIR, for
// scripts/bench-verify.sh. It is skipped unless both are set.
func TestWriteBenchChain(t *testing.T) {
	out := os.Getenv("IMASHARD_BENCH_DIR")
	n, _ := strconv.Atoi(os.Getenv("IMASHARD_BENCH_ENTRIES"))
	if out == "" || n <= 0 {
		t.Skip("set IMASHARD_BENCH_DIR and IMASHARD_BENCH_ENTRIES to write a benchmark chain")
	}
	_, path := benchShard(t, n)
	ex, err := ExportTPM2Tools(path, filepath.Join(out, "export"))
	if err != nil {
		t.Fatal(err)
	}
	chain := filepath.Join(out, "chain")
	if err := os.MkdirAll(chain, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path, filepath.Join(chain, filepath.Base(path))); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(ex.AKPEM, filepath.Join(out, "ak.pem")); err != nil {
		t.Fatal(err)
	}
}
