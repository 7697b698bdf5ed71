package replay

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/imashard/imashard/pkg/imalog"
	"github.com/imashard/imashard/pkg/pcr"
)

// benchList returns a list of n entries written by scripts/genlog.
func benchList(b *testing.B, n int) []byte {
	b.Helper()
	dir := b.TempDir()
	cmd := exec.Command("go", "run", "../../scripts/genlog", "-entries", itoa(n), "-out", dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("genlog: %v\n%s", err, out)
	}
	data, err := os.ReadFile(filepath.Join(dir, "binary_runtime_measurements"))
	if err != nil {
		b.Fatal(err)
	}
	return data
}

func itoa(n int) string {
	var buf [20]byte
	i := len(buf)
	for {
		i--
		buf[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(buf[i:])
		}
	}
}

// BenchmarkReplay reads and replays 100,000 ima-ng entries into the sha1
// and sha256 banks, as log replay does.
func BenchmarkReplay(b *testing.B) {
	data := benchList(b, 100000)
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for range b.N {
		r, _ := New(nil, []pcr.Alg{pcr.SHA1, pcr.SHA256})
		rd := imalog.NewReader(bytes.NewReader(data), imalog.Options{})
		for {
			e, err := rd.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			if err := r.Extend(e); err != nil {
				b.Fatal(err)
			}
		}
		if r.Entries() != 100000 {
			b.Fatalf("%d entries", r.Entries())
		}
	}
}

// BenchmarkReader only frames the same entries.
func BenchmarkReader(b *testing.B) {
	data := benchList(b, 100000)
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for range b.N {
		rd := imalog.NewReader(bytes.NewReader(data), imalog.Options{})
		for {
			if _, err := rd.Next(); err != nil {
				if !errors.Is(err, io.EOF) {
					b.Fatal(err)
				}
				break
			}
		}
	}
}

// BenchmarkReplayAll is BenchmarkReplay with a goroutine per bank and a
// prefix match after every entry, as log replay runs on a file.
func BenchmarkReplayAll(b *testing.B) {
	data := benchList(b, 100000)
	r, _ := New(nil, []pcr.Alg{pcr.SHA1, pcr.SHA256})
	if _, err := ReplayAll(imalog.NewReader(bytes.NewReader(data), imalog.Options{}), r, nil); err != nil {
		b.Fatal(err)
	}
	target := r.Values(nil)
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for range b.N {
		r, _ := New(nil, []pcr.Alg{pcr.SHA1, pcr.SHA256})
		open := func() (EntryReader, error) {
			return imalog.NewReader(bytes.NewReader(data), imalog.Options{}), nil
		}
		result, err := ReplayAllReopen(open, r, target)
		if err != nil || result.Prefix.Entries != 100000 {
			b.Fatalf("%v", err)
		}
	}
}
