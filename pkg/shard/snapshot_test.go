package shard

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport/linuxudstpm"

	"github.com/imashard/imashard/pkg/imalog"
	"github.com/imashard/imashard/pkg/pcr"
	"github.com/imashard/imashard/pkg/swtpm"
	"github.com/imashard/imashard/pkg/tpm"
)

// testEnv is a real swtpm with an AK, a growing log file and a chain
// directory. The test extends the PCRs itself, entry by entry, the way the
// kernel does, so log and TPM agree.
type testEnv struct {
	t       testing.TB
	inst    *swtpm.Instance
	tpm     *tpm.TPM
	ak      *tpm.AK
	banks   []pcr.Alg
	logPath string
	dir     string
	mu      sync.Mutex // serialises the TPM connection between goroutines
}

func newTestEnv(t testing.TB) *testEnv {
	t.Helper()
	if err := swtpm.Available(); err != nil {
		t.Skipf("swtpm not installed: %v", err)
	}
	inst, err := swtpm.Start(t.TempDir())
	if err != nil {
		t.Fatalf("start swtpm: %v", err)
	}
	t.Cleanup(func() { inst.Stop() })

	tp, err := tpm.Open(inst.Spec())
	if err != nil {
		t.Fatalf("open swtpm: %v", err)
	}
	t.Cleanup(func() { tp.Close() })
	ak, err := tp.LoadAK(tpm.AKOptions{})
	if err != nil {
		t.Fatalf("load AK: %v", err)
	}
	banks, err := tp.Banks()
	if err != nil {
		t.Fatal(err)
	}

	env := &testEnv{t: t, inst: inst, tpm: tp, ak: ak, banks: banks, dir: t.TempDir()}
	env.logPath = filepath.Join(t.TempDir(), "binary_runtime_measurements")
	if err := os.WriteFile(env.logPath, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return env
}

func readTestEntries(t testing.TB, name string) []*imalog.Entry {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := imalog.NewReader(f, imalog.Options{})
	var entries []*imalog.Entry
	for {
		e, err := r.Next()
		if err == io.EOF {
			return entries
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		entries = append(entries, e)
	}
}

// appendLog adds entries to the log file without extending the TPM, as the
// kernel does just before its PCR extend.
func (env *testEnv) appendLog(entries ...*imalog.Entry) {
	f, err := os.OpenFile(env.logPath, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		env.t.Error(err)
		return
	}
	defer f.Close()
	for _, e := range entries {
		if _, err := f.Write(e.Raw); err != nil {
			env.t.Error(err)
		}
	}
}

// extend extends each entry's PCR in every bank with the entry's template
// hash in that bank's algorithm, or 0xFF bytes for a violation.
func (env *testEnv) extend(entries ...*imalog.Entry) {
	for _, e := range entries {
		digests := map[pcr.Alg][]byte{}
		for _, alg := range env.banks {
			if e.IsViolation() {
				digests[alg] = bytes.Repeat([]byte{0xff}, alg.Size())
				continue
			}
			h, err := e.TemplateHash(alg)
			if err != nil {
				env.t.Errorf("entry %d: template hash %s: %v", e.Index, alg, err)
				return
			}
			digests[alg] = h
		}
		if err := env.tpm.ExtendPCR(int(e.PCR), digests); err != nil {
			env.t.Errorf("extend entry %d: %v", e.Index, err)
			return
		}
	}
}

func (env *testEnv) measure(entries ...*imalog.Entry) {
	env.appendLog(entries...)
	env.extend(entries...)
}

func (env *testEnv) snapshot(tail bool) (*SnapshotResult, error) {
	return Snapshot(context.Background(), SnapshotOptions{
		Dir: env.dir, LogPath: env.logPath, TPM: env.tpm, AK: env.ak, Tail: tail,
		BootID: "test-boot-1",
	})
}

func (env *testEnv) verify(dir string) (*Report, error) {
	return Verify(context.Background(), VerifyOptions{Dir: dir, AKPublic: env.ak.PublicKey})
}

func (env *testEnv) verifyLive() (*Report, error) {
	env.mu.Lock()
	defer env.mu.Unlock()
	return Verify(context.Background(), VerifyOptions{
		Dir: env.dir, AKPublic: env.ak.PublicKey,
		Live: &LiveOptions{TPM: env.tpm, AK: env.ak, LogPath: env.logPath, BootID: "test-boot-1"},
	})
}

func TestSnapshotChainReplaysToKnownPCR(t *testing.T) {
	env := newTestEnv(t)
	entries := readTestEntries(t, "sha1.log.bin")
	if len(entries) != 362 {
		t.Fatalf("sha1.log.bin has %d entries, want 362", len(entries))
	}

	bounds := []int{0, 1, 100, 101, 250, 362}
	for i := 1; i < len(bounds); i++ {
		env.measure(entries[bounds[i-1]:bounds[i]]...)
		res, err := env.snapshot(false)
		if err != nil {
			t.Fatalf("snapshot %d: %v", i-1, err)
		}
		if res.Sequence != uint64(i-1) || res.FirstIndex != int64(bounds[i-1]) || res.Entries != int64(bounds[i]-bounds[i-1]) {
			t.Errorf("snapshot %d: sequence %d first %d entries %d, want %d %d %d", i-1, res.Sequence, res.FirstIndex, res.Entries, i-1, bounds[i-1], bounds[i]-bounds[i-1])
		}
	}

	report, err := env.verify(env.dir)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if !report.OK || len(report.Shards) != 5 {
		t.Fatalf("report OK=%v with %d shards, want 5", report.OK, len(report.Shards))
	}
	if report.Final.NextIndex != 362 {
		t.Errorf("final next index %d, want 362", report.Final.NextIndex)
	}

	// Known-good PCR 10 after the whole list, published with the list by
	// its source (IBM TSS utils/imakvtpcr10.txt).
	want := map[pcr.Alg]string{
		pcr.SHA1:   "9be6bac02bf18d09d17e726c2df00bca4e8831ea",
		pcr.SHA256: "7fac48c81837d6d29046008aef0cdad8c2745cc98c3340cbba9bfdf39b4124b8",
	}
	for alg, value := range want {
		if got := report.Final.Values[alg.String()]["10"]; got != value {
			t.Errorf("verified final %s PCR 10 = %s, want %s", alg, got, value)
		}
	}
}

func TestSnapshotCutsAtQuotedPrefix(t *testing.T) {
	env := newTestEnv(t)
	entries := readTestEntries(t, "sha1.log.bin")[:30]

	// The log runs 10 entries ahead of the TPM, as when the kernel has
	// appended entries it has not extended yet.
	env.measure(entries[:20]...)
	env.appendLog(entries[20:]...)

	res, err := env.snapshot(true)
	if err != nil {
		t.Fatal(err)
	}
	if res.Entries != 20 || res.TailEntries != 10 {
		t.Errorf("first shard: %d entries, %d tail, want 20 and 10", res.Entries, res.TailEntries)
	}

	env.extend(entries[20:]...)
	res, err = env.snapshot(false)
	if err != nil {
		t.Fatal(err)
	}
	if res.FirstIndex != 30 || res.Entries != 0 {
		t.Errorf("second shard: first index %d, %d entries, want 30 and 0", res.FirstIndex, res.Entries)
	}

	report, err := env.verifyLive()
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if report.Live == nil || !report.Live.OK || report.Live.Attested != 0 {
		t.Errorf("live report %+v", report.Live)
	}
}

func TestSnapshotRejectsChangedTail(t *testing.T) {
	env := newTestEnv(t)
	entries := readTestEntries(t, "sha1.log.bin")[:50]
	env.measure(entries[:20]...)
	env.appendLog(entries[20:30]...)
	if _, err := env.snapshot(true); err != nil {
		t.Fatal(err)
	}

	// The live list now holds other entries where the shard's tail was.
	var data []byte
	for _, e := range append(slices.Clone(entries[:20]), entries[40:50]...) {
		data = append(data, e.Raw...)
	}
	if err := os.WriteFile(env.logPath, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := env.snapshot(false); !errors.Is(err, ErrReplayMismatch) {
		t.Errorf("snapshot over a list with a different tail: %v, want ErrReplayMismatch", err)
	}
}

func TestSnapshotRejectsLogBehindTPM(t *testing.T) {
	env := newTestEnv(t)
	entries := readTestEntries(t, "sha1.log.bin")[:5]
	env.measure(entries[:3]...)
	env.extend(entries[3:]...)

	_, err := env.snapshot(false)
	if !errors.Is(err, ErrNoPrefixMatch) {
		t.Fatalf("snapshot with a log shorter than the TPM state: %v, want ErrNoPrefixMatch", err)
	}
	if files, _ := ListChain(env.dir); len(files) != 0 {
		t.Errorf("failed snapshot left %d shards", len(files))
	}
}

// TestSnapshotWhileMeasuring appends entries to the log while snapshots
// run, the way the kernel appends before it extends. tpm.TPM is not safe for
// concurrent commands, so the writer extends the PCRs only between
// snapshots, holding env.mu. The log therefore runs ahead of the TPM during
// every snapshot, and tails end up ahead of it until the writer catches up.
func TestSnapshotWhileMeasuring(t *testing.T) {
	env := newTestEnv(t)
	entries := readTestEntries(t, "sha1.log.bin")

	var rounds atomic.Int64
	done := make(chan struct{})
	defer func() { <-done }()
	go func() {
		defer close(done)
		var pending []*imalog.Entry
		for i := 0; i <= len(entries); {
			// The round count changes under the lock, so a snapshot that
			// reads a new count finds that round's extends in the TPM.
			env.mu.Lock()
			env.extend(pending...)
			rounds.Add(1)
			env.mu.Unlock()
			if i == len(entries) {
				return
			}

			// Bursts of 1 to 7 entries, as when a program starts and maps
			// its libraries.
			n := min(i%7+1, len(entries)-i)
			pending = entries[i : i+n]
			env.appendLog(pending...)
			i += n
			time.Sleep(time.Millisecond)
		}
	}()

	snapshots := 0
	for last := int64(-1); ; snapshots++ {
		finished := false
		for rounds.Load() == last && !finished {
			select {
			case <-done:
				finished = true
			case <-time.After(time.Millisecond):
			}
		}

		env.mu.Lock()
		last = rounds.Load()
		_, err := env.snapshot(snapshots%2 == 0)
		env.mu.Unlock()
		if err != nil {
			t.Fatalf("snapshot %d: %v", snapshots, err)
		}
		if finished {
			break
		}
	}
	if snapshots < 20 {
		t.Errorf("only %d snapshots ran while measuring", snapshots)
	}

	report, err := env.verifyLive()
	if err != nil {
		t.Fatalf("verify after %d snapshots: %v", snapshots, err)
	}
	covered := report.Final.NextIndex + report.Live.Attested
	if covered != int64(len(entries)) || report.Live.Pending != 0 {
		t.Errorf("chain and live log cover %d entries with %d pending, want all %d", covered, report.Live.Pending, len(entries))
	}

	var sum int64
	for _, s := range report.Shards {
		sum += s.Entries + s.TailEntries
	}
	if sum != report.Final.NextIndex {
		t.Errorf("shards hold %d entries, final index %d: entries lost or counted twice", sum, report.Final.NextIndex)
	}
}

func TestVerifyRejectsWrongAK(t *testing.T) {
	env := newTestEnv(t)
	env.measure(readTestEntries(t, "ima-ng-sha1.bin")...)
	if _, err := env.snapshot(false); err != nil {
		t.Fatal(err)
	}

	env.mu.Lock()
	other, err := env.tpm.LoadAK(tpm.AKOptions{Alg: "rsa"})
	env.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	_, err = Verify(context.Background(), VerifyOptions{Dir: env.dir, AKPublic: other.PublicKey})
	if !errors.Is(err, ErrWrongAK) {
		t.Errorf("verify with another AK: %v, want ErrWrongAK", err)
	}
}

func TestSnapshotRejectsUnexplainedStart(t *testing.T) {
	env := newTestEnv(t)
	entries := readTestEntries(t, "ima-ng-sha1.bin")

	// PCR 10 holds a value that no entry in the log explains, as after
	// measurements whose list is gone. A new chain starts from zero, so no
	// prefix of the log reaches the TPM.
	env.extend(entries[0])
	env.measure(entries[1:]...)
	if _, err := env.snapshot(false); !errors.Is(err, ErrNoPrefixMatch) {
		t.Errorf("snapshot over an unexplained start: %v, want ErrNoPrefixMatch", err)
	}
}

// chainOfFive builds five shards and returns their paths.
func chainOfFive(t *testing.T, env *testEnv) []string {
	t.Helper()
	entries := readTestEntries(t, "ima-ng-sha1.bin")
	var paths []string
	for i := 0; i < 5; i++ {
		env.measure(entries[i])
		res, err := env.snapshot(false)
		if err != nil {
			t.Fatal(err)
		}
		paths = append(paths, res.Path)
	}
	return paths
}

func copyChain(t *testing.T, paths []string) string {
	t.Helper()
	dir := t.TempDir()
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(p)), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestVerifyChainFileOperations(t *testing.T) {
	env := newTestEnv(t)
	paths := chainOfFive(t, env)
	if _, err := env.verify(env.dir); err != nil {
		t.Fatalf("intact chain: %v", err)
	}

	zero := pcr.Values{}
	wrong := pcr.Values{}
	for _, alg := range env.banks {
		zero.Set(alg, 10, pcr.Zero(alg))
		wrong.Set(alg, 10, bytes.Repeat([]byte{1}, alg.Size()))
	}
	if _, err := Verify(context.Background(), VerifyOptions{Dir: env.dir, AKPublic: env.ak.PublicKey, TrustedStart: zero}); err != nil {
		t.Errorf("trusted start equal to the reset state: %v", err)
	}
	_, err := Verify(context.Background(), VerifyOptions{Dir: env.dir, AKPublic: env.ak.PublicKey, TrustedStart: wrong})
	if !errors.Is(err, ErrReplayMismatch) {
		t.Errorf("trusted start that differs from the first shard's start: %v, want ErrReplayMismatch", err)
	}

	cases := []struct {
		name   string
		mutate func(dir string)
		want   error
	}{
		{"remove middle", func(dir string) { os.Remove(filepath.Join(dir, FileName(2))) }, ErrMissingShard},
		{"remove first", func(dir string) { os.Remove(filepath.Join(dir, FileName(0))) }, ErrMissingShard},
		{"duplicate as next", func(dir string) {
			copyFile(t, filepath.Join(dir, FileName(2)), filepath.Join(dir, FileName(5)))
		}, ErrDuplicate},
		{"duplicate replaces", func(dir string) {
			os.Remove(filepath.Join(dir, FileName(3)))
			copyFile(t, filepath.Join(dir, FileName(2)), filepath.Join(dir, FileName(3)))
		}, ErrDuplicate},
		{"swap two", func(dir string) {
			a, b := filepath.Join(dir, FileName(1)), filepath.Join(dir, FileName(3))
			tmp := filepath.Join(dir, "swap")
			os.Rename(a, tmp)
			os.Rename(b, a)
			os.Rename(tmp, b)
		}, ErrReorder},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := copyChain(t, paths)
			c.mutate(dir)
			_, err := env.verify(dir)
			if !errors.Is(err, c.want) {
				t.Errorf("error %v, want %v", err, c.want)
			}
		})
	}
}

func copyFile(t *testing.T, from, to string) {
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyRejectsEveryByteChange(t *testing.T) {
	env := newTestEnv(t)
	entries := readTestEntries(t, "ima-ng-sha1.bin")
	env.measure(entries[:4]...)
	env.appendLog(entries[4:]...)
	res, err := env.snapshot(true)
	if err != nil {
		t.Fatal(err)
	}
	if res.Entries != 4 || res.TailEntries != 2 {
		t.Fatalf("shard has %d entries and %d tail, want 4 and 2", res.Entries, res.TailEntries)
	}
	original, err := os.ReadFile(res.Path)
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	path := filepath.Join(dir, FileName(0))
	for offset := range original {
		for _, mask := range []byte{0x01, 0x80} {
			data := bytes.Clone(original)
			data[offset] ^= mask
			if err := os.WriteFile(path, data, 0o644); err != nil {
				t.Fatal(err)
			}
			report, err := env.verify(dir)
			if err == nil || report.OK {
				t.Errorf("byte %d of %d xor %#x: verify passed", offset, len(original), mask)
			}
		}
	}
}

// TestSnapshotCrashHelper is the child side of TestSnapshotCrashAnywhere:
// it runs one snapshot and may exit at the step in IMASHARD_TEST_CRASH_AT.
func TestSnapshotCrashHelper(t *testing.T) {
	spec := os.Getenv("IMASHARD_TEST_SNAPSHOT_TPM")
	if spec == "" {
		t.Skip("helper for TestSnapshotCrashAnywhere")
	}
	tp, err := tpm.Open(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	ak, err := tp.LoadAK(tpm.AKOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = Snapshot(context.Background(), SnapshotOptions{
		Dir: os.Getenv("IMASHARD_TEST_CRASH_DIR"), LogPath: os.Getenv("IMASHARD_TEST_SNAPSHOT_LOG"),
		TPM: tp, AK: ak, BootID: "test-boot-1",
	})
	if err != nil {
		t.Fatal(err)
	}
}

// flushTransient removes transient objects a crashed child left in swtpm,
// which has no resource manager to flush them when the connection closes.
func flushTransient(t *testing.T, socket string) {
	t.Helper()
	tr, err := linuxudstpm.Open(socket)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: 0x80000000, PropertyCount: 16}.Execute(tr)
	if err != nil {
		t.Fatal(err)
	}
	handles, err := rsp.CapabilityData.Data.Handles()
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range handles.Handle {
		if _, err := (tpm2.FlushContext{FlushHandle: h}).Execute(tr); err != nil {
			t.Fatalf("flush %#x: %v", h, err)
		}
	}
}

func TestSnapshotCrashAnywhere(t *testing.T) {
	env := newTestEnv(t)
	entries := readTestEntries(t, "sha1.log.bin")
	reopen := func() {
		var err error
		if env.tpm, err = tpm.Open(env.inst.Spec()); err != nil {
			t.Fatal(err)
		}
		if env.ak, err = env.tpm.LoadAK(tpm.AKOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	measured := 0
	for step := 1; step <= snapshotCrashSteps; step++ {
		env.measure(entries[measured : measured+10]...)
		measured += 10
		before, err := ListChain(env.dir)
		if err != nil {
			t.Fatal(err)
		}

		// swtpm serves one connection at a time, so the child gets it alone.
		env.tpm.FlushAK(env.ak)
		env.tpm.Close()
		cmd := exec.Command(os.Args[0], "-test.run=^TestSnapshotCrashHelper$")
		cmd.Env = append(os.Environ(), "IMASHARD_TEST_CRASH_AT="+strconv.Itoa(step),
			"IMASHARD_TEST_SNAPSHOT_TPM="+env.inst.Spec(), "IMASHARD_TEST_CRASH_DIR="+env.dir,
			"IMASHARD_TEST_SNAPSHOT_LOG="+env.logPath)
		out, err := cmd.CombinedOutput()
		var exitErr *exec.ExitError
		if !errors.As(err, &exitErr) || exitErr.ExitCode() != 75 {
			t.Fatalf("step %d: child did not exit at the crash point: %v\n%s", step, err, out)
		}
		flushTransient(t, env.inst.Socket)
		reopen()

		after, err := ListChain(env.dir)
		if err != nil {
			t.Fatal(err)
		}
		wantNew := 0
		if step == 5 || step == 6 {
			wantNew = 1
		}
		if len(after)-len(before) != wantNew {
			t.Errorf("step %d: crash left %d new shards, want %d", step, len(after)-len(before), wantNew)
		}
		if _, err := env.verify(env.dir); len(after) > 0 && err != nil {
			t.Errorf("step %d: chain after the crash does not verify: %v", step, err)
		}

		// The next snapshot cleans up, takes over the lock and continues.
		if _, err := env.snapshot(false); err != nil {
			t.Fatalf("step %d: snapshot after the crash: %v", step, err)
		}
		left, _ := filepath.Glob(filepath.Join(env.dir, tempPrefix+"*"))
		if len(left) != 0 {
			t.Errorf("step %d: temporary files left: %v", step, left)
		}
	}

	report, err := env.verify(env.dir)
	if err != nil {
		t.Fatalf("final chain: %v", err)
	}
	if report.Final.NextIndex != int64(measured) {
		t.Errorf("chain covers %d entries, %d were measured", report.Final.NextIndex, measured)
	}
}

func TestSnapshotDetectsTPMReset(t *testing.T) {
	env := newTestEnv(t)
	entries := readTestEntries(t, "ima-ng-sha1.bin")
	env.measure(entries...)
	if _, err := env.snapshot(false); err != nil {
		t.Fatal(err)
	}

	// Restarting swtpm on the same state is a TPM reset: PCRs return to
	// zero and resetCount grows. Extending the same entries again brings
	// the PCRs back to the chain's end, so only resetCount shows the reset.
	env.tpm.FlushAK(env.ak)
	env.tpm.Close()
	if err := env.inst.Stop(); err != nil {
		t.Fatal(err)
	}
	inst, err := swtpm.Start(env.inst.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inst.Stop() })
	env.inst = inst
	if env.tpm, err = tpm.Open(inst.Spec()); err != nil {
		t.Fatal(err)
	}
	if env.ak, err = env.tpm.LoadAK(tpm.AKOptions{}); err != nil {
		t.Fatal(err)
	}
	env.extend(entries...)

	if _, err := env.snapshot(false); !errors.Is(err, ErrResetDetected) {
		t.Errorf("snapshot after a TPM reset: %v, want ErrResetDetected", err)
	}
	if _, err := env.verifyLive(); !errors.Is(err, ErrResetDetected) {
		t.Errorf("live verify after a TPM reset: %v, want ErrResetDetected", err)
	}
	if files, _ := ListChain(env.dir); len(files) != 1 {
		t.Errorf("chain has %d shards after the rejected snapshot, want 1", len(files))
	}
}

// TestSnapshotAcrossKexec follows a kexec into a kernel without
// CONFIG_IMA_KEXEC: the TPM keeps its PCRs, the new boot has a new boot ID
// and its list starts empty.
func TestSnapshotAcrossKexec(t *testing.T) {
	env := newTestEnv(t)
	entries := readTestEntries(t, "sha1.log.bin")[:60]

	env.measure(entries[:20]...)
	env.appendLog(entries[20:25]...)
	if _, err := env.snapshot(true); err != nil {
		t.Fatal(err)
	}
	// The kernel extends the tail entries before the kexec.
	env.extend(entries[20:25]...)

	if err := os.WriteFile(env.logPath, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	env.measure(entries[25:60]...)

	res, err := Snapshot(context.Background(), SnapshotOptions{
		Dir: env.dir, LogPath: env.logPath, TPM: env.tpm, AK: env.ak, BootID: "test-boot-2",
	})
	if err != nil {
		t.Fatalf("snapshot after kexec: %v", err)
	}
	if res.FirstIndex != 25 || res.Entries != 35 || res.BootFirstIndex != 25 {
		t.Errorf("shard after kexec: first index %d, %d entries, boot first index %d, want 25, 35 and 25", res.FirstIndex, res.Entries, res.BootFirstIndex)
	}

	report, err := Verify(context.Background(), VerifyOptions{
		Dir: env.dir, AKPublic: env.ak.PublicKey,
		Live: &LiveOptions{TPM: env.tpm, AK: env.ak, LogPath: env.logPath, BootID: "test-boot-2"},
	})
	if err != nil {
		t.Fatalf("verify after kexec: %v", err)
	}
	if report.Final.NextIndex != 60 || report.Live.Attested != 0 {
		t.Errorf("verified up to %d with %d live entries, want 60 and 0", report.Final.NextIndex, report.Live.Attested)
	}
}

func TestSnapshotRejectsCorruptChainEnd(t *testing.T) {
	env := newTestEnv(t)
	entries := readTestEntries(t, "sha1.log.bin")[:20]
	env.measure(entries[:10]...)
	first, err := env.snapshot(false)
	if err != nil {
		t.Fatal(err)
	}

	// The last byte of a shard is in the quote's signature, which the
	// structural checks of the chain end do not read.
	data, err := os.ReadFile(first.Path)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)-1] ^= 0x01
	if err := os.WriteFile(first.Path, data, 0o644); err != nil {
		t.Fatal(err)
	}

	env.measure(entries[10:]...)
	_, err = env.snapshot(false)
	if !errors.Is(err, tpm.ErrBadSignature) {
		t.Fatalf("snapshot after a corrupt shard: err = %v, want tpm.ErrBadSignature", err)
	}
	files, err := ListChain(env.dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 1 {
		t.Errorf("chain has %d shards after the rejected snapshot, want 1", len(files))
	}
}

func TestSnapshotChainDirectoryErrors(t *testing.T) {
	env := newTestEnv(t)
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := map[string]struct {
		dir  string
		want string
	}{
		"regular file": {notDir, "is not a directory"},
		"missing":      {filepath.Join(t.TempDir(), "none"), "does not exist: create it first"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Snapshot(context.Background(), SnapshotOptions{
				Dir: c.dir, LogPath: env.logPath, TPM: env.tpm, AK: env.ak, BootID: "test-boot-1",
			})
			if err == nil {
				t.Fatalf("snapshot into %s succeeded", c.dir)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not say %q", err, c.want)
			}
			if strings.Contains(err.Error(), "<nil>") {
				t.Errorf("error %q prints a nil error", err)
			}
		})
	}
}
