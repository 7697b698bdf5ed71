package shard

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/imashard/imashard/pkg/pcr"
)

func sampleHeader() *Header {
	start := pcr.Values{}
	start.Set(pcr.SHA1, 10, pcr.Zero(pcr.SHA1))
	start.Set(pcr.SHA256, 10, pcr.Zero(pcr.SHA256))
	end := pcr.Values{}
	end.Set(pcr.SHA1, 10, bytes.Repeat([]byte{0xab}, 20))
	end.Set(pcr.SHA256, 10, bytes.Repeat([]byte{0xcd}, 32))
	end.Set(pcr.SHA256, 11, bytes.Repeat([]byte{0xef}, 32))
	entries := sha256.Sum256([]byte("entries"))
	tail := sha256.Sum256(nil)
	return &Header{
		Version:    FormatVersion,
		Sequence:   0,
		FirstIndex: 0,
		Entries:    Section{Count: 3, Size: 7, Digest: entries[:]},
		Tail:       Section{Count: 0, Size: 0, Digest: tail[:]},
		Source:     LogSource{File: "binary_runtime_measurements", DigestAlg: pcr.SHA1, DigestSize: 20},
		Start:      start,
		End:        end,
		Rules:      map[pcr.Alg]string{pcr.SHA1: RuleNamePerBank, pcr.SHA256: RuleNamePaddedSHA1},
		AKPublic:   []byte{0, 2, 0xaa, 0xbb},
		BootID:     "0b3c1f0e-9a52-4c9b-8d53-3a5f1f6a7d10",
	}
}

func TestHeaderRoundTrip(t *testing.T) {
	h := sampleHeader()
	data, err := MarshalHeader(h)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data[:8], Magic[:]) {
		t.Errorf("prefix %q, want magic %q", data[:8], Magic[:])
	}

	got, err := UnmarshalHeader(data)
	if err != nil {
		t.Fatalf("UnmarshalHeader: %v", err)
	}
	if err := got.End.Diff(h.End); err != nil {
		t.Errorf("end values: %v", err)
	}
	if err := got.Start.Diff(h.Start); err != nil {
		t.Errorf("start values: %v", err)
	}
	if got.Rules[pcr.SHA256] != RuleNamePaddedSHA1 || got.Rules[pcr.SHA1] != RuleNamePerBank {
		t.Errorf("rules = %v", got.Rules)
	}
	if got.Entries.Count != 3 || got.Entries.Size != 7 || got.BootID != h.BootID {
		t.Errorf("decoded header %+v", got)
	}

	again, err := MarshalHeader(got)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again, data) {
		t.Error("re-encoding a decoded header changed its bytes")
	}
}

func TestHeaderDeterministic(t *testing.T) {
	// Map iteration order differs between runs, so encode many times.
	first, err := MarshalHeader(sampleHeader())
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50; i++ {
		data, err := MarshalHeader(sampleHeader())
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(data, first) {
			t.Fatalf("encoding %d differs from the first", i)
		}
	}
}

func TestHeaderRejectsBadPrefix(t *testing.T) {
	data, err := MarshalHeader(sampleHeader())
	if err != nil {
		t.Fatal(err)
	}

	badVersion := bytes.Clone(data)
	badVersion[11] = 2
	if _, err := UnmarshalHeader(badVersion); !errors.Is(err, ErrUnknownVersion) {
		t.Errorf("version 2: error %v, want ErrUnknownVersion", err)
	}

	if _, err := UnmarshalHeader(data[:len(data)-1]); !errors.Is(err, ErrTruncated) {
		t.Errorf("short header: error %v, want ErrTruncated", err)
	}

	badMagic := bytes.Clone(data)
	badMagic[0] = 'X'
	if _, err := UnmarshalHeader(badMagic); !errors.Is(err, ErrMalformed) {
		t.Errorf("bad magic: error %v, want ErrMalformed", err)
	}
}

func TestHeaderRejectsEveryByteFlip(t *testing.T) {
	data, err := MarshalHeader(sampleHeader())
	if err != nil {
		t.Fatal(err)
	}
	for i := range data {
		mutated := bytes.Clone(data)
		mutated[i] ^= 0x01
		h, err := UnmarshalHeader(mutated)
		if err != nil {
			continue
		}
		// A flip inside a value decodes, but then the header differs from
		// the original, so the quote's qualifying data no longer matches.
		again, _ := MarshalHeader(h)
		if bytes.Equal(again, data) {
			t.Errorf("flip at offset %d decodes to the original header", i)
		}
	}
}

func TestTrailerRoundTrip(t *testing.T) {
	tr := Trailer{Attest: []byte{0xff, 0x54, 0x43, 0x47}, Signature: []byte{0, 0x18, 1, 2}}
	data, err := MarshalTrailer(tr)
	if err != nil {
		t.Fatal(err)
	}
	got, err := UnmarshalTrailer(data, 100)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Attest, tr.Attest) || !bytes.Equal(got.Signature, tr.Signature) {
		t.Errorf("trailer round trip: %x %x", got.Attest, got.Signature)
	}

	if _, err := UnmarshalTrailer(data[:len(data)-1], 100); !errors.Is(err, ErrTruncated) {
		t.Errorf("short trailer: %v, want ErrTruncated", err)
	}
	if _, err := UnmarshalTrailer(append(bytes.Clone(data), 0), 100); !errors.Is(err, ErrMalformed) {
		t.Errorf("trailing byte: %v, want ErrMalformed", err)
	}
}

// writeTestShard writes a structurally valid shard with a fake quote. The
// format tests need no TPM; tests of the quote use a real swtpm.
func writeTestShard(t *testing.T, dir string, seq uint64, entries []byte) string {
	t.Helper()
	h := sampleHeader()
	h.Sequence = seq
	if seq > 0 {
		h.Previous = make([]byte, 32)
	}
	sum := sha256.Sum256(entries)
	h.Entries = Section{Count: 1, Size: int64(len(entries)), Digest: sum[:]}
	header, err := MarshalHeader(h)
	if err != nil {
		t.Fatal(err)
	}
	trailer, err := MarshalTrailer(Trailer{Attest: []byte("attest"), Signature: []byte("signature")})
	if err != nil {
		t.Fatal(err)
	}
	path, err := writeShard(dir, seq, header, entries, trailer)
	if err != nil {
		t.Fatal(err)
	}
	return path
}

func TestOpenChecksSections(t *testing.T) {
	dir := t.TempDir()
	path := writeTestShard(t, dir, 0, []byte("entry bytes"))

	sf, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := sf.CheckSections(); err != nil {
		t.Errorf("CheckSections on an intact file: %v", err)
	}
	if string(sf.Trailer.Attest) != "attest" {
		t.Errorf("attest = %q", sf.Trailer.Attest)
	}
	sf.Close()

	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	entriesAt := bytes.Index(data, []byte("entry bytes"))
	data[entriesAt] ^= 0x20
	bad := filepath.Join(t.TempDir(), FileName(0))
	if err := os.WriteFile(bad, data, 0o644); err != nil {
		t.Fatal(err)
	}
	sf, err = Open(bad)
	if err != nil {
		t.Fatal(err)
	}
	defer sf.Close()
	if err := sf.CheckSections(); !errors.Is(err, ErrHeaderMismatch) {
		t.Errorf("changed entry byte: %v, want ErrHeaderMismatch", err)
	}

	for _, cut := range []int{0, 5, 16, 40, len(data) - 1} {
		short := filepath.Join(t.TempDir(), FileName(0))
		if err := os.WriteFile(short, data[:cut], 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := Open(short); !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrMalformed) {
			t.Errorf("file cut at %d: %v, want ErrTruncated", cut, err)
		}
	}
}

func TestWriteNeverOverwrites(t *testing.T) {
	dir := t.TempDir()
	path := writeTestShard(t, dir, 3, []byte("first"))
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	_, err = writeShard(dir, 3, []byte("second"))
	if !errors.Is(err, ErrDuplicate) {
		t.Errorf("second write of sequence 3: %v, want ErrDuplicate", err)
	}
	after, _ := os.ReadFile(path)
	if !bytes.Equal(before, after) {
		t.Error("existing shard changed")
	}

	if err := renameNoReplace(filepath.Join(dir, "missing"), path); err == nil {
		t.Error("rename onto an existing shard succeeded")
	}
}

// TestCrashHelper is the child side of TestWriteCrash: it writes one shard
// and may exit at the step named in IMASHARD_TEST_CRASH_AT.
func TestCrashHelper(t *testing.T) {
	dir := os.Getenv("IMASHARD_TEST_CRASH_DIR")
	if dir == "" {
		t.Skip("helper for TestWriteCrash")
	}
	writeTestShard(t, dir, 0, bytes.Repeat([]byte("entry"), 1000))
}

func TestWriteCrash(t *testing.T) {
	for step := 1; step <= writeCrashSteps; step++ {
		dir := t.TempDir()
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelper$")
		cmd.Env = append(os.Environ(), "IMASHARD_TEST_CRASH_DIR="+dir, "IMASHARD_TEST_CRASH_AT="+strconv.Itoa(step))
		out, err := cmd.CombinedOutput()
		var exitErr *exec.ExitError
		if !errors.As(err, &exitErr) || exitErr.ExitCode() != 75 {
			t.Fatalf("step %d: child did not exit at the crash point: %v\n%s", step, err, out)
		}

		files, err := ListChain(dir)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case step <= 4 && len(files) != 0:
			t.Errorf("step %d: crash before rename left shard %s", step, files[0].Path)
		case step >= 5 && len(files) != 1:
			t.Errorf("step %d: crash after rename left %d shards, want 1", step, len(files))
		}
		for _, f := range files {
			sf, err := Open(f.Path)
			if err != nil {
				t.Errorf("step %d: shard after crash: %v", step, err)
				continue
			}
			if err := sf.CheckSections(); err != nil {
				t.Errorf("step %d: %v", step, err)
			}
			sf.Close()
		}

		if err := removeTempFiles(dir); err != nil {
			t.Fatal(err)
		}
		left, _ := filepath.Glob(filepath.Join(dir, tempPrefix+"*"))
		if len(left) != 0 {
			t.Errorf("step %d: temporary files left after cleanup: %v", step, left)
		}
	}
}

func TestLockExcludesAndTakesOverStale(t *testing.T) {
	dir := t.TempDir()
	l, err := lockDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lockDir(dir); !errors.Is(err, ErrLocked) {
		t.Errorf("second lock: %v, want ErrLocked", err)
	} else if !bytes.Contains([]byte(err.Error()), []byte(strconv.Itoa(os.Getpid()))) {
		t.Errorf("lock error does not name the holder PID: %v", err)
	}
	if err := l.unlock(); err != nil {
		t.Fatal(err)
	}

	// A finished child's PID stands for a holder that died without cleanup.
	child := exec.Command("true")
	if err := child.Run(); err != nil {
		t.Fatal(err)
	}
	stale := strconv.Itoa(child.Process.Pid) + "\n"
	if err := os.WriteFile(filepath.Join(dir, lockFileName), []byte(stale), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err = lockDir(dir)
	if err != nil {
		t.Fatalf("stale lock not taken over: %v", err)
	}
	content, _ := os.ReadFile(filepath.Join(dir, lockFileName))
	if string(content) != strconv.Itoa(os.Getpid())+"\n" {
		t.Errorf("lock file after takeover = %q, want our PID", content)
	}
	l.unlock()
}

func TestListChainRejectsOddNames(t *testing.T) {
	dir := t.TempDir()
	writeTestShard(t, dir, 0, []byte("a"))
	writeTestShard(t, dir, 1, []byte("b"))
	files, err := ListChain(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 2 || files[0].Sequence != 0 || files[1].Sequence != 1 {
		t.Errorf("ListChain = %+v", files)
	}

	if err := os.WriteFile(filepath.Join(dir, "shard-2.ims"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ListChain(dir); !errors.Is(err, ErrMalformed) {
		t.Errorf("odd name: %v, want ErrMalformed", err)
	}
}

// oldShardNamePattern is the regular expression ListChain used before it
// parsed names by hand. The tests check that both accept the same names.
var oldShardNamePattern = regexp.MustCompile(`^shard-([0-9]{10,20})\.ims$`)

func TestSequenceDigitsNames(t *testing.T) {
	cases := []struct {
		name   string
		digits string // empty when the name must be rejected
	}{
		{"shard-0000000000.ims", "0000000000"},
		{"shard-0000000042.ims", "0000000042"},
		{"shard-18446744073709551615.ims", "18446744073709551615"},
		{"shard-99999999999999999999.ims", "99999999999999999999"}, // above 2^64-1, so ListChain rejects it later
		{"shard-000000001.ims", ""},                                // 9 digits
		{"shard-000000000000000000001.ims", ""},                    // 21 digits
		{"shard-00000000a1.ims", ""},
		{"shard-+000000001.ims", ""},
		{"shard-0000000001.ims.tmp", ""},
		{"shard-0000000001.imsx", ""},
		{"shard-0000000001.IMS", ""},
		{"shard-0000000001", ""},
		{"shard-.ims", ""},
		{"shard-", ""},
		{"Shard-0000000001.ims", ""},
		{".shard-0000000001.ims", ""},
		{"xshard-0000000001.ims", ""},
		{"shard-0000000001.ims\n", ""},
		{"shard-\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669.ims", ""}, // Arabic-Indic digits
		{"", ""},
	}
	for _, c := range cases {
		got, ok := sequenceDigits(c.name)
		if ok != (c.digits != "") || got != c.digits {
			t.Errorf("sequenceDigits(%q) = %q, %t; want %q", c.name, got, ok, c.digits)
		}
		m := oldShardNamePattern.FindStringSubmatch(c.name)
		if (m != nil) != ok {
			t.Errorf("%q: sequenceDigits accepts it: %t, the old pattern: %t", c.name, ok, m != nil)
		}
	}
}

func TestListChainRejectsOverflowSequence(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "shard-18446744073709551616.ims"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := ListChain(dir)
	if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "out of range") {
		t.Errorf("ListChain with a sequence above 2^64-1: %v, want ErrMalformed naming the range", err)
	}
}

func FuzzSequenceDigits(f *testing.F) {
	f.Add("shard-0000000001.ims")
	f.Add("shard-18446744073709551615.ims")
	f.Add("shard-1.ims")
	f.Fuzz(func(t *testing.T, name string) {
		got, ok := sequenceDigits(name)
		m := oldShardNamePattern.FindStringSubmatch(name)
		if (m != nil) != ok {
			t.Fatalf("%q: sequenceDigits accepts it: %t, the old pattern: %t", name, ok, m != nil)
		}
		if ok && got != m[1] {
			t.Fatalf("%q: sequenceDigits = %q, the old pattern captured %q", name, got, m[1])
		}
	})
}

func FuzzOpen(f *testing.F) {
	dir := f.TempDir()
	path := writeTestShardF(f, dir)
	seed, err := os.ReadFile(path)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Add(seed[:20])
	f.Add([]byte("IMASHARD"))

	fuzzDir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(fuzzDir, FileName(0))
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		sf, err := Open(p)
		if err != nil {
			if !isNotShard(err) {
				t.Fatalf("error without a sentinel: %v", err)
			}
			return
		}
		defer sf.Close()
		sf.CheckSections()
		if _, err := MarshalHeader(sf.Header); err != nil {
			t.Fatalf("decoded header does not encode: %v", err)
		}
	})
}

func writeTestShardF(f *testing.F, dir string) string {
	h := sampleHeader()
	entries := []byte("entry bytes")
	sum := sha256.Sum256(entries)
	h.Entries = Section{Count: 1, Size: int64(len(entries)), Digest: sum[:]}
	header, err := MarshalHeader(h)
	if err != nil {
		f.Fatal(err)
	}
	trailer, err := MarshalTrailer(Trailer{Attest: []byte("attest"), Signature: []byte("signature")})
	if err != nil {
		f.Fatal(err)
	}
	path, err := writeShard(dir, 0, header, entries, trailer)
	if err != nil {
		f.Fatal(err)
	}
	return path
}

func TestOpenListReportsMissingIMA(t *testing.T) {
	if _, err := os.Stat(DefaultLogPath); err == nil {
		t.Skipf("%s exists on this host", DefaultLogPath)
	}
	_, err := openList(DefaultLogPath)
	if !errors.Is(err, ErrNoMeasurementList) {
		t.Fatalf("missing securityfs list: %v, want ErrNoMeasurementList", err)
	}
	if !bytes.Contains([]byte(err.Error()), []byte("CONFIG_IMA")) {
		t.Errorf("error does not name the kernel option: %v", err)
	}

	_, err = openList(filepath.Join(t.TempDir(), "missing"))
	if err == nil || errors.Is(err, ErrNoMeasurementList) {
		t.Errorf("missing --log file: %v, want a plain not-found error", err)
	}
}

func TestOpenRejectsNonRegularFile(t *testing.T) {
	dir := t.TempDir()
	_, err := Open(dir)
	if !errors.Is(err, ErrMalformed) {
		t.Fatalf("Open(%s): err = %v, want ErrMalformed", dir, err)
	}
	if !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("error %q does not say the path is not a regular file", err)
	}
}

func TestVerifyNamesDamagedShardOnce(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, FileName(0))
	if err := os.WriteFile(path, []byte("garbage\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}

	_, err = Verify(context.Background(), VerifyOptions{Dir: dir, AKPublic: &key.PublicKey})
	if !errors.Is(err, ErrTruncated) {
		t.Fatalf("Verify of an 8-byte shard: err = %v, want ErrTruncated", err)
	}
	if n := strings.Count(err.Error(), path); n != 1 {
		t.Errorf("error %q names %s %d times, want once", err, path, n)
	}
}
