package securityfs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imashard/imashard/internal/vmtest"
	"github.com/imashard/imashard/pkg/pcr"
)

// TestInKernel boots the custom kernel with this package's test binary as
// /init and runs the TestGuest* tests there against the real securityfs.
func TestInKernel(t *testing.T) {
	vmtest.RunGuestTests(t, vmtest.Options{
		Kernel:  vmtest.Kernel(t),
		Package: ".",
		Dir:     ".",
		Args:    []string{"-test.v", "-test.run=^TestGuest"},
	}, "TestGuestLists", "TestGuestTrim", "TestGuestTrimTooMany", "TestGuestBusy", "TestGuestStaging", "TestGuestNonRoot")
}

func requireGuest(t *testing.T) *FS {
	t.Helper()
	if !vmtest.InGuest() && os.Getenv("IMASHARD_GUEST_CHILD") == "" {
		t.Skip("runs inside the custom kernel; TestInKernel starts it")
	}
	fs, err := Open("")
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return fs
}

var measureSeq int

// measure makes the kernel add n entries: the tcb policy measures every
// new file that root reads on the ramfs root.
func measure(t *testing.T, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		measureSeq++
		p := fmt.Sprintf("/tmp/measure-%d", measureSeq)
		if err := os.WriteFile(p, []byte(p), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := os.ReadFile(p); err != nil {
			t.Fatal(err)
		}
	}
}

// splitSHA1List splits a SHA-1 binary list (little-endian, non-legacy
// templates) into raw entries.
func splitSHA1List(t *testing.T, data []byte) [][]byte {
	t.Helper()
	return splitList(t, data, 20)
}

// splitList splits a binary list whose digest field has digestSize bytes.
func splitList(t *testing.T, data []byte, digestSize int) [][]byte {
	t.Helper()
	var entries [][]byte
	for off := 0; off < len(data); {
		start := off
		need := func(n int) {
			if off+n > len(data) {
				t.Fatalf("list truncated at byte %d (entry %d)", off, len(entries))
			}
		}
		need(4 + digestSize + 4)
		off += 4 + digestSize
		nameLen := int(binary.LittleEndian.Uint32(data[off:]))
		off += 4
		need(nameLen + 4)
		off += nameLen
		dataLen := int(binary.LittleEndian.Uint32(data[off:]))
		off += 4
		need(dataLen)
		off += dataLen
		entries = append(entries, data[start:off])
	}
	return entries
}

func readList(t *testing.T, path string) [][]byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return splitSHA1List(t, data)
}

func TestGuestLists(t *testing.T) {
	fs := requireGuest(t)
	lists, err := fs.Lists()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]List{}
	for _, l := range lists {
		names[l.Name] = l
		t.Logf("list %s: %+v", l.Name, l)
	}
	for _, want := range []string{
		"binary_runtime_measurements", "binary_runtime_measurements_sha1", "binary_runtime_measurements_sha256",
		"binary_runtime_measurements_staged", "binary_runtime_measurements_sha1_staged", "binary_runtime_measurements_sha256_staged",
		"ascii_runtime_measurements", "ascii_runtime_measurements_sha256_staged",
	} {
		if _, ok := names[want]; !ok {
			t.Errorf("missing %s", want)
		}
	}
	if err := fs.CheckStaging(); err != nil {
		t.Errorf("CheckStaging = %v, want nil on a CONFIG_IMA_STAGING kernel", err)
	}

	count, err := fs.Count()
	if err != nil {
		t.Fatal(err)
	}
	entries := readList(t, filepath.Join(fs.IMADir, "binary_runtime_measurements"))
	// Reading the list is itself no measurement, so count and list agree.
	if int64(len(entries)) != count {
		t.Errorf("runtime_measurements_count = %d, binary list has %d entries", count, len(entries))
	}
	if count < 2 {
		t.Errorf("count = %d, want boot_aggregate plus /init at least", count)
	}
	if _, err := fs.Violations(); err != nil {
		t.Error(err)
	}
}

func TestGuestTrim(t *testing.T) {
	fs := requireGuest(t)
	measure(t, 5)
	listPath := filepath.Join(fs.IMADir, "binary_runtime_measurements")
	before := readList(t, listPath)
	countBefore, err := fs.Count()
	if err != nil {
		t.Fatal(err)
	}

	w, err := fs.OpenWriter(pcr.SHA1, false)
	if err != nil {
		t.Fatal(err)
	}
	// What the writer reads is what it trims: compare with the plain read.
	viaWriter, err := io.ReadAll(w)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(viaWriter, bytes.Join(before, nil)) {
		t.Errorf("list read through the writer (%d bytes) differs from the plain read", len(viaWriter))
	}
	if err := w.Trim(3); err != nil {
		t.Fatalf("Trim(3): %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	after := readList(t, listPath)
	countAfter, err := fs.Count()
	if err != nil {
		t.Fatal(err)
	}
	if countAfter != countBefore-3 {
		t.Errorf("count after Trim(3) = %d, want %d", countAfter, countBefore-3)
	}
	if len(after) != len(before)-3 {
		t.Fatalf("list after Trim(3) has %d entries, want %d", len(after), len(before)-3)
	}
	for i := range after {
		if !bytes.Equal(after[i], before[i+3]) {
			t.Fatalf("entry %d after trim differs from entry %d before", i, i+3)
		}
	}

	// The per-bank files show the same list, so the sha256 file lost the
	// same three entries.
	sha256Path, err := fs.ListPath(pcr.SHA256, false)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(sha256Path)
	if err != nil {
		t.Fatal(err)
	}
	if got := len(splitList(t, data, 32)); got != len(after) {
		t.Errorf("sha256 list has %d entries after the trim, the sha1 list %d", got, len(after))
	}
}

func TestGuestTrimTooMany(t *testing.T) {
	fs := requireGuest(t)
	count, err := fs.Count()
	if err != nil {
		t.Fatal(err)
	}
	err = fs.Trim(count + 1000)
	if !errors.Is(err, ErrTooFewEntries) {
		t.Fatalf("Trim(count+1000) = %v, want ErrTooFewEntries", err)
	}
	if !errors.Is(err, syscall.ENOENT) {
		t.Errorf("Trim(count+1000) = %v, want errno ENOENT", err)
	}
	after, err := fs.Count()
	if err != nil {
		t.Fatal(err)
	}
	if after < count {
		t.Fatalf("count went from %d to %d after a rejected trim", count, after)
	}
}

func TestGuestBusy(t *testing.T) {
	fs := requireGuest(t)
	fs.Retry = Retry{Attempts: 3, Delay: 10 * time.Millisecond}

	reader, err := os.Open(filepath.Join(fs.IMADir, "ascii_runtime_measurements"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = fs.OpenWriter(pcr.SHA1, false)
	if !errors.Is(err, ErrBusy) || !errors.Is(err, syscall.EBUSY) {
		t.Errorf("OpenWriter with a reader open = %v, want ErrBusy (EBUSY)", err)
	}
	reader.Close()

	w, err := fs.OpenWriter(pcr.SHA1, false)
	if err != nil {
		t.Fatalf("OpenWriter after the reader closed: %v", err)
	}
	defer w.Close()

	// A writer excludes readers of every list, not only its own file. The
	// open runs in a child process so that it comes from another thread
	// for certain.
	out, err := exec.Command("/init", "-test.run=^TestGuestChildOpenRead$").CombinedOutput()
	if err != nil {
		t.Fatalf("child read while a writer is open: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "child: read open failed with EBUSY") {
		t.Errorf("child output %q, want a read open failing with EBUSY", out)
	}
}

// TestGuestChildOpenRead is run as a child process by TestGuestBusy.
func TestGuestChildOpenRead(t *testing.T) {
	if os.Getpid() == 1 || os.Getppid() != 1 {
		t.Skip("child of TestGuestBusy only")
	}
	_, err := os.Open("/sys/kernel/security/integrity/ima/binary_runtime_measurements_sha256")
	if errors.Is(err, syscall.EBUSY) {
		fmt.Println("child: read open failed with EBUSY")
		return
	}
	fmt.Printf("child: read open returned %v\n", err)
}

func TestGuestStaging(t *testing.T) {
	fs := requireGuest(t)
	measure(t, 4)
	before := readList(t, filepath.Join(fs.IMADir, "binary_runtime_measurements"))

	w, err := fs.OpenWriter(pcr.SHA1, true)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.Stage(); err != nil {
		t.Fatalf("Stage: %v", err)
	}
	staged, err := io.ReadAll(w)
	if err != nil {
		t.Fatal(err)
	}
	stagedEntries := splitSHA1List(t, staged)
	if len(stagedEntries) < len(before) {
		t.Fatalf("staged %d entries, the list had %d before", len(stagedEntries), len(before))
	}
	for i := range before {
		if !bytes.Equal(stagedEntries[i], before[i]) {
			t.Fatalf("staged entry %d differs from list entry %d", i, i)
		}
	}
	if err := w.Stage(); !errors.Is(err, ErrAlreadyStaged) || !errors.Is(err, syscall.EEXIST) {
		t.Errorf("second Stage = %v, want ErrAlreadyStaged (EEXIST)", err)
	}
	if err := w.Trim(1); err == nil {
		t.Error("Trim on a _staged writer succeeded")
	}
	if err := w.Delete(); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if err := w.Delete(); !errors.Is(err, ErrNothingStaged) || !errors.Is(err, syscall.ENOENT) {
		t.Errorf("second Delete = %v, want ErrNothingStaged (ENOENT)", err)
	}
	if err := w.Rewind(); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(w)
	if err != nil {
		t.Fatal(err)
	}
	if len(rest) != 0 {
		t.Errorf("staged list has %d bytes after Delete, want 0", len(rest))
	}
	w.Close()

	// Nothing was measured while the writer held the lists, so the current
	// list is empty: staging it fails with ENOENT.
	w2, err := fs.OpenWriter(pcr.SHA1, true)
	if err != nil {
		t.Fatal(err)
	}
	defer w2.Close()
	count, err := fs.Count()
	if err != nil {
		t.Fatal(err)
	}
	if count == 0 {
		if err := w2.Stage(); !errors.Is(err, ErrNothingToStage) {
			t.Errorf("Stage of an empty list = %v, want ErrNothingToStage", err)
		}
	} else {
		t.Logf("list has %d new entries after Delete; skipping the empty-stage check", count)
	}
}

func TestGuestNonRoot(t *testing.T) {
	requireGuest(t)
	cmd := exec.Command("/init", "-test.run=^TestGuestChildNonRoot$", "-test.v")
	cmd.Env = append(os.Environ(), "IMASHARD_GUEST_CHILD=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("non-root child: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "--- PASS: TestGuestChildNonRoot") {
		t.Fatalf("non-root child did not pass:\n%s", out)
	}
}

// TestGuestChildNonRoot runs as uid 65534, started by TestGuestNonRoot.
func TestGuestChildNonRoot(t *testing.T) {
	if os.Getenv("IMASHARD_GUEST_CHILD") == "" || os.Getuid() == 0 {
		t.Skip("child of TestGuestNonRoot only")
	}
	fs := requireGuest(t)
	_, err := fs.OpenWriter(pcr.SHA1, false)
	if !errors.Is(err, ErrPermission) {
		t.Fatalf("OpenWriter as uid %d = %v, want ErrPermission", os.Getuid(), err)
	}
	t.Logf("OpenWriter as uid %d: %v", os.Getuid(), err)
}
