package handoff

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"
)

// readAppended parses the archive that BuildInitrd appended after base.
func readAppended(t *testing.T, initrd []byte, baseLen int) map[string]cpio.Record {
	t.Helper()
	start := (baseLen + 3) / 4 * 4
	if len(initrd) < start {
		t.Fatalf("initrd is %d bytes, shorter than the padded base (%d)", len(initrd), start)
	}
	for i := baseLen; i < start; i++ {
		if initrd[i] != 0 {
			t.Fatalf("padding byte at offset %d is %#x, want 0", i, initrd[i])
		}
	}
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(initrd[start:])))
	if err != nil {
		t.Fatalf("read appended archive at offset %d: %v", start, err)
	}
	m := map[string]cpio.Record{}
	for _, r := range recs {
		m[r.Name] = r
	}
	return m
}

func TestBuildInitrdAlignsAndKeepsBase(t *testing.T) {
	for baseLen := 0; baseLen < 8; baseLen++ {
		base := bytes.Repeat([]byte{0xAB}, baseLen)
		initrd, err := BuildInitrd(base, []File{{Path: "imashard/handoff/shards/0001.shard", Data: []byte("shard-1")}})
		if err != nil {
			t.Fatalf("base %d bytes: %v", baseLen, err)
		}
		if !bytes.Equal(initrd[:baseLen], base) {
			t.Errorf("base %d bytes: base not kept unchanged", baseLen)
		}
		recs := readAppended(t, initrd, baseLen)
		r, ok := recs["imashard/handoff/shards/0001.shard"]
		if !ok {
			t.Fatalf("base %d bytes: shard missing; records %v", baseLen, recs)
		}
		got, _ := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
		if string(got) != "shard-1" {
			t.Errorf("base %d bytes: shard contents %q, want shard-1", baseLen, got)
		}
	}
}

func TestBuildInitrdWritesParentsFirst(t *testing.T) {
	initrd, err := BuildInitrd(nil, []File{
		{Path: "a/b/c.txt", Data: []byte("c")},
		{Path: "a/d.txt", Data: []byte("d"), Mode: 0o755},
	})
	if err != nil {
		t.Fatal(err)
	}
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(initrd)))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range recs {
		names = append(names, r.Name)
	}
	want := "a a/b a/b/c.txt a/d.txt"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("archive order = %q, want %q", got, want)
	}
	for _, r := range recs {
		if r.Name == "a/d.txt" && r.Mode&0o777 != 0o755 {
			t.Errorf("a/d.txt mode = %o, want 755", r.Mode&0o777)
		}
		if r.Name == "a" && r.Mode&cpio.S_IFDIR == 0 {
			t.Errorf("a is not a directory record (mode %o)", r.Mode)
		}
	}
}

func TestBuildInitrdRejectsBadPaths(t *testing.T) {
	for _, p := range []string{"", "/", "../etc/passwd", "a/../../b", "a//b"} {
		_, err := BuildInitrd(nil, []File{{Path: p}})
		if !errors.Is(err, ErrInvalidPath) {
			t.Errorf("path %q: err = %v, want ErrInvalidPath", p, err)
		}
	}
	_, err := BuildInitrd(nil, []File{{Path: "x"}, {Path: "x"}})
	if !errors.Is(err, ErrInvalidPath) {
		t.Errorf("duplicate path: err = %v, want ErrInvalidPath", err)
	}
}

func TestReadCarryKeepsAbsolutePaths(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "sub"), 0o755)
	os.WriteFile(filepath.Join(dir, "sub", "f"), []byte("F"), 0o600)
	os.WriteFile(filepath.Join(dir, "g"), []byte("G"), 0o644)

	files, err := ReadCarry([]string{dir})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, f := range files {
		got[f.Path] = string(f.Data)
	}
	prefix := strings.TrimPrefix(dir, "/")
	if got[prefix+"/sub/f"] != "F" || got[prefix+"/g"] != "G" || len(got) != 2 {
		t.Errorf("carried files = %v", got)
	}

	if _, err := ReadCarry([]string{"relative/path"}); err == nil {
		t.Errorf("relative path accepted")
	}
	if _, err := ReadCarry([]string{filepath.Join(dir, "missing")}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing path: err = %v, want ErrNotExist", err)
	}
}

func TestKexecMeasureRules(t *testing.T) {
	policy := `dont_measure fsmagic=0x9fa0
measure func=BPRM_CHECK mask=MAY_EXEC
measure func=KEXEC_KERNEL_CHECK
appraise func=KEXEC_INITRAMFS_CHECK appraise_type=imasig
measure func=KEXEC_CMDLINE pcr=12
`
	rules, err := KexecMeasureRules(strings.NewReader(policy))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"measure func=KEXEC_KERNEL_CHECK", "measure func=KEXEC_CMDLINE pcr=12"}
	if strings.Join(rules, "|") != strings.Join(want, "|") {
		t.Errorf("rules = %q, want %q", rules, want)
	}
}

func FuzzKexecMeasureRules(f *testing.F) {
	f.Add("measure func=KEXEC_KERNEL_CHECK\n")
	f.Add("dont_measure fsmagic=0x9fa0\nmeasure func=KEXEC_CMDLINE template=ima-buf\n")
	f.Fuzz(func(t *testing.T, policy string) {
		rules, err := KexecMeasureRules(strings.NewReader(policy))
		if err != nil {
			return
		}
		for _, r := range rules {
			if !strings.HasPrefix(r, "measure") || !strings.Contains(r, "func=KEXEC_") {
				t.Fatalf("rule %q does not measure a kexec hook", r)
			}
		}
	})
}

// fakeLog stands for the kernel's entry count: each snapshot covers the
// current count, and arrivals[i] entries appear after attempt i's load.
type fakeLog struct {
	count    int64
	arrivals []int64
	attempt  int
	executed bool
	unloaded bool
}

func (l *fakeLog) plan() Plan {
	return Plan{
		Initrd: []byte("base"),
		Snapshot: func(ctx context.Context) ([]File, int64, error) {
			l.attempt++
			return []File{{Path: ShardDir + "/s", Data: []byte{byte(l.attempt)}}}, l.count, nil
		},
		EntryCount: func() (int64, error) { return l.count, nil },
		load: func(kernel, initrd []byte, cmdline string, sc Syscall) error {
			if l.attempt-1 < len(l.arrivals) {
				l.count += l.arrivals[l.attempt-1]
			}
			return nil
		},
		unload:  func(Syscall) error { l.unloaded = true; return nil },
		execute: func() error { l.executed = true; return nil },
	}
}

func TestRunExecutesWhenLogStill(t *testing.T) {
	l := &fakeLog{count: 10}
	res, err := Run(context.Background(), l.plan())
	if err != nil {
		t.Fatal(err)
	}
	if !l.executed || res.Attempts != 1 || res.Covered != 10 {
		t.Errorf("executed=%v attempts=%d covered=%d, want true 1 10", l.executed, res.Attempts, res.Covered)
	}
}

func TestRunSnapshotsAgainAfterArrivals(t *testing.T) {
	l := &fakeLog{count: 10, arrivals: []int64{2, 0}}
	res, err := Run(context.Background(), l.plan())
	if err != nil {
		t.Fatal(err)
	}
	if !l.executed || res.Attempts != 2 || res.Covered != 12 {
		t.Errorf("executed=%v attempts=%d covered=%d, want true 2 12", l.executed, res.Attempts, res.Covered)
	}
	recs := readAppended(t, res.Initrd, 4)
	r := recs[ShardDir+"/s"]
	b := make([]byte, 1)
	r.ReadAt(b, 0)
	if b[0] != 2 {
		t.Errorf("initrd carries the shard of attempt %d, want 2", b[0])
	}
}

func TestRunRejectsMovingLog(t *testing.T) {
	l := &fakeLog{count: 10, arrivals: []int64{1, 1, 1}}
	_, err := Run(context.Background(), l.plan())
	if !errors.Is(err, ErrLogMoving) {
		t.Fatalf("err = %v, want ErrLogMoving", err)
	}
	if l.executed {
		t.Errorf("executed although the log kept moving")
	}
	if !l.unloaded {
		t.Errorf("the kernel loaded for the rejected handoff stays loaded")
	}
}

func TestRunForceExecutesMovingLog(t *testing.T) {
	l := &fakeLog{count: 10, arrivals: []int64{1, 1, 1}}
	p := l.plan()
	p.Force = true
	if _, err := Run(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	if !l.executed {
		t.Errorf("--force did not execute")
	}
}

func TestRunDryRunLoadsNothing(t *testing.T) {
	l := &fakeLog{count: 5}
	p := l.plan()
	p.DryRun = true
	p.load = func([]byte, []byte, string, Syscall) error { t.Fatal("dry run loaded a kernel"); return nil }
	res, err := Run(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	if l.executed || len(res.Initrd) == 0 {
		t.Errorf("executed=%v initrd=%d bytes", l.executed, len(res.Initrd))
	}
}

func TestKeepCopiesAndNeverOverwrites(t *testing.T) {
	src, dst := t.TempDir(), filepath.Join(t.TempDir(), "chain")
	os.WriteFile(filepath.Join(src, "0001.shard"), []byte("one"), 0o644)
	os.WriteFile(filepath.Join(src, "0002.shard"), []byte("two"), 0o644)

	names, err := Keep(src, dst)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(names, ",") != "0001.shard,0002.shard" {
		t.Errorf("names = %v", names)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "0002.shard")); string(b) != "two" {
		t.Errorf("kept 0002.shard = %q, want two", b)
	}

	// Same bytes again: no error.
	if _, err := Keep(src, dst); err != nil {
		t.Errorf("second keep of identical files: %v", err)
	}

	// Different bytes under an existing name: conflict, old file intact.
	os.WriteFile(filepath.Join(src, "0001.shard"), []byte("ONE"), 0o644)
	if _, err := Keep(src, dst); !errors.Is(err, ErrConflict) {
		t.Errorf("err = %v, want ErrConflict", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "0001.shard")); string(b) != "one" {
		t.Errorf("0001.shard overwritten with %q", b)
	}
	if left, _ := filepath.Glob(filepath.Join(dst, ".keep-*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

func TestRunUnloadsAfterLaterSnapshotFails(t *testing.T) {
	l := &fakeLog{count: 10, arrivals: []int64{1}}
	p := l.plan()
	snapshot := p.Snapshot
	p.Snapshot = func(ctx context.Context) ([]File, int64, error) {
		if l.attempt == 1 {
			l.attempt++
			return nil, 0, errors.New("quote failed")
		}
		return snapshot(ctx)
	}
	if _, err := Run(context.Background(), p); err == nil {
		t.Fatal("Run succeeded although the second snapshot failed")
	}
	if l.executed || !l.unloaded {
		t.Errorf("executed=%v unloaded=%v, want false true", l.executed, l.unloaded)
	}
}

func TestRunLeavesNothingToUnloadBeforeLoad(t *testing.T) {
	l := &fakeLog{count: 10}
	p := l.plan()
	p.Snapshot = func(context.Context) ([]File, int64, error) { return nil, 0, errors.New("quote failed") }
	if _, err := Run(context.Background(), p); err == nil {
		t.Fatal("Run succeeded although the snapshot failed")
	}
	if l.unloaded {
		t.Errorf("unloaded although nothing was loaded")
	}
}

// TestNewcPaddingAgainstUrootReader writes records with every name and data
// length modulo 4 and reads them back with u-root's newc reader, which is
// an independent implementation. Names, modes, sizes and bytes must
// survive, and the archive must end with the trailer on a 4-byte boundary.
func TestNewcPaddingAgainstUrootReader(t *testing.T) {
	var files []File
	for nameLen := 1; nameLen <= 8; nameLen++ {
		for dataLen := 0; dataLen <= 5; dataLen++ {
			name := strings.Repeat("n", nameLen) + "." + string(rune('a'+dataLen))
			files = append(files, File{Path: "d/" + name, Data: bytes.Repeat([]byte{byte(nameLen)}, dataLen), Mode: 0o600})
		}
	}
	initrd, err := BuildInitrd(nil, files)
	if err != nil {
		t.Fatal(err)
	}
	if len(initrd)%4 != 0 {
		t.Errorf("archive is %d bytes, not a multiple of 4", len(initrd))
	}
	recs := readAppended(t, initrd, 0)
	if len(recs) != len(files)+1 {
		t.Errorf("%d records, want %d files and their directory", len(recs), len(files))
	}
	if d, ok := recs["d"]; !ok || d.Mode&cpio.S_IFMT != cpio.S_IFDIR || d.Mode&0o777 != 0o755 {
		t.Errorf("directory d: %+v", d.Info)
	}
	for _, f := range files {
		r, ok := recs[f.Path]
		if !ok {
			t.Fatalf("%s missing", f.Path)
		}
		got, _ := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
		if !bytes.Equal(got, f.Data) || r.Mode&cpio.S_IFMT != cpio.S_IFREG || r.Mode&0o777 != 0o600 {
			t.Errorf("%s: %d bytes, mode %o; want %d bytes, regular 0600", f.Path, len(got), r.Mode, len(f.Data))
		}
	}
	if !bytes.HasSuffix(bytes.TrimRight(initrd, "\x00"), []byte("TRAILER!!!")) {
		t.Error("archive does not end with the trailer record")
	}
}
