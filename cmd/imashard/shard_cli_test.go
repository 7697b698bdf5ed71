package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imashard/imashard/pkg/imalog"
	"github.com/imashard/imashard/pkg/pcr"
	"github.com/imashard/imashard/pkg/shard"
	"github.com/imashard/imashard/pkg/tpm"
)

// measureInto appends the entries of the list at src to logPath and extends
// the swtpm's PCRs with them, then closes the TPM connection so the command
// under test can open its own (swtpm serves one connection at a time).
func measureInto(t *testing.T, spec, src, logPath string, from, to int) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	r := imalog.NewReader(bytes.NewReader(data), imalog.Options{})
	tp, err := tpm.Open(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	banks, err := tp.Banks()
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	for i := 0; i < to; i++ {
		e, err := r.Next()
		if err != nil {
			t.Fatalf("%s entry %d: %v", src, i, err)
		}
		if i < from {
			continue
		}
		if _, err := f.Write(e.Raw); err != nil {
			t.Fatal(err)
		}
		digests := map[pcr.Alg][]byte{}
		for _, alg := range banks {
			if digests[alg], err = e.TemplateHash(alg); err != nil {
				t.Fatal(err)
			}
		}
		if err := tp.ExtendPCR(int(e.PCR), digests); err != nil {
			t.Fatal(err)
		}
	}
}

func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	err := run(args, bytes.NewReader(nil), &stdout, &stderr)
	if stderr.Len() > 0 {
		t.Logf("imashard %v stderr:\n%s", args, stderr.String())
	}
	return stdout.String(), err
}

func TestSnapshotExportVerifyCommands(t *testing.T) {
	inst := startSWTPM(t)

	src := filepath.Join("..", "..", "pkg", "shard", "testdata", "sha1.log.bin")
	logPath := filepath.Join(t.TempDir(), "binary_runtime_measurements")
	dir := t.TempDir()

	for _, cut := range [][2]int{{0, 50}, {50, 120}} {
		measureInto(t, inst.Spec(), src, logPath, cut[0], cut[1])
		out, err := runCLI(t, "snapshot", "--dir", dir, "--log", logPath, "--tpm", inst.Spec(), "--json")
		if err != nil {
			t.Fatalf("snapshot: %v", err)
		}
		var res map[string]any
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("snapshot --json output %q: %v", out, err)
		}
		if res["first_index"] != float64(cut[0]) || res["entries"] != float64(cut[1]-cut[0]) {
			t.Errorf("snapshot result %v, want first_index %d and %d entries", res, cut[0], cut[1]-cut[0])
		}
	}

	exportDir := t.TempDir()
	if _, err := runCLI(t, "export", "--tpm2-tools", exportDir, filepath.Join(dir, shard.FileName(0))); err != nil {
		t.Fatalf("export: %v", err)
	}
	akPEM := filepath.Join(exportDir, "ak.pem")

	measureInto(t, inst.Spec(), src, logPath, 120, 130)
	out, err := runCLI(t, "verify", "--ak", akPEM, dir, "--live", "--tpm", inst.Spec(), "--log", logPath, "--json")
	if err != nil {
		t.Fatalf("verify --live: %v\n%s", err, out)
	}
	var report shard.Report
	if err := json.Unmarshal([]byte(out), &report); err != nil {
		t.Fatal(err)
	}
	if !report.OK || len(report.Shards) != 2 || report.Final.NextIndex != 120 || report.Live.Attested != 10 {
		t.Errorf("report OK=%v shards=%d next=%d live attested=%d, want true 2 120 10", report.OK, len(report.Shards), report.Final.NextIndex, report.Live.Attested)
	}

	// --trusted-start takes a PCR file: zeros match the chain's first
	// shard, any other value does not.
	trusted := filepath.Join(t.TempDir(), "trusted.txt")
	if err := os.WriteFile(trusted, []byte("PCR-10: 0000000000000000000000000000000000000000\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := runCLI(t, "verify", "--ak", akPEM, "--trusted-start", "sha1,"+trusted, dir); err != nil {
		t.Errorf("verify with a zero trusted start: %v", err)
	}
	if err := os.WriteFile(trusted, []byte("PCR-10: 1111111111111111111111111111111111111111\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := runCLI(t, "verify", "--ak", akPEM, "--trusted-start", "sha1,"+trusted, dir); !errors.Is(err, shard.ErrReplayMismatch) {
		t.Errorf("verify with a different trusted start: %v, want ErrReplayMismatch", err)
	}

	// A changed byte in the entry section must fail with exit status 1.
	path := filepath.Join(dir, shard.FileName(1))
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0x04
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = runCLI(t, "verify", "--ak", akPEM, dir)
	if !errors.Is(err, errVerifyFailed) || errors.Is(err, errUsage) {
		t.Errorf("verify of a changed shard: %v, want a verification failure", err)
	}
	if !bytes.Contains([]byte(out), []byte("FAILED")) {
		t.Errorf("report of a changed shard does not say FAILED:\n%s", out)
	}

	if _, err := runCLI(t, "verify", dir); !errors.Is(err, errUsage) {
		t.Errorf("verify without --ak: %v, want a usage error", err)
	}
}

func TestVerifyHelpExitsZero(t *testing.T) {
	for _, name := range []string{"snapshot", "verify", "export"} {
		var stderr bytes.Buffer
		err := run([]string{name, "--help"}, nil, io.Discard, &stderr)
		if err != nil && err.Error() != "flag: help requested" {
			t.Errorf("%s --help: %v", name, err)
		}
		if !bytes.Contains(stderr.Bytes(), []byte("usage: imashard "+name)) {
			t.Errorf("%s --help does not print its usage:\n%s", name, stderr.String())
		}
	}
}

func TestSnapshotWithoutNewEntries(t *testing.T) {
	inst := startSWTPM(t)

	src := filepath.Join("..", "..", "pkg", "shard", "testdata", "sha1.log.bin")
	logPath := filepath.Join(t.TempDir(), "binary_runtime_measurements")
	dir := t.TempDir()
	measureInto(t, inst.Spec(), src, logPath, 0, 20)
	if _, err := runCLI(t, "snapshot", "--dir", dir, "--log", logPath, "--tpm", inst.Spec()); err != nil {
		t.Fatalf("first snapshot: %v", err)
	}

	out, err := runCLI(t, "snapshot", "--dir", dir, "--log", logPath, "--tpm", inst.Spec())
	if err != nil {
		t.Fatalf("second snapshot: %v", err)
	}
	if !strings.Contains(out, "no new entries since history index 20") {
		t.Errorf("snapshot without new entries printed %q, want it to say there were none since index 20", out)
	}
}

func TestSnapshotCreatesChainDirectory(t *testing.T) {
	inst := startSWTPM(t)

	src := filepath.Join("..", "..", "pkg", "shard", "testdata", "sha1.log.bin")
	logPath := filepath.Join(t.TempDir(), "binary_runtime_measurements")
	measureInto(t, inst.Spec(), src, logPath, 0, 20)

	// The first snapshot on a new machine, as in the README.
	dir := filepath.Join(t.TempDir(), "var", "lib", "imashard")
	if _, err := runCLI(t, "snapshot", "--dir", dir, "--log", logPath, "--tpm", inst.Spec()); err != nil {
		t.Fatalf("snapshot into a missing chain directory: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, shard.FileName(0))); err != nil {
		t.Errorf("first shard: %v", err)
	}
	info, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if perm := info.Mode().Perm(); perm != 0o700 {
		t.Errorf("chain directory mode %v, want 0700 as kexec creates it", perm)
	}
}

// TestSnapshotRejectsHeldChainLock checks that snapshot fails with
// ErrLocked and writes no shard while another holder has the chain lock.
// Once the lock is free, snapshot must succeed, which fails if its
// snapshot step tries to take the lock a second time.
func TestSnapshotRejectsHeldChainLock(t *testing.T) {
	inst := startSWTPM(t)

	src := filepath.Join("..", "..", "pkg", "shard", "testdata", "sha1.log.bin")
	logPath := filepath.Join(t.TempDir(), "binary_runtime_measurements")
	measureInto(t, inst.Spec(), src, logPath, 0, 20)

	dir := t.TempDir()
	lock, err := shard.LockChain(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = runCLI(t, "snapshot", "--dir", dir, "--log", logPath, "--tpm", inst.Spec())
	if !errors.Is(err, shard.ErrLocked) {
		t.Errorf("snapshot with the chain lock held: %v, want ErrLocked", err)
	}
	if _, err := os.Stat(filepath.Join(dir, shard.FileName(0))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a shard was written while the lock was held (%v)", err)
	}

	if err := lock.Unlock(); err != nil {
		t.Fatal(err)
	}
	if _, err := runCLI(t, "snapshot", "--dir", dir, "--log", logPath, "--tpm", inst.Spec()); err != nil {
		t.Errorf("snapshot after the lock was released: %v", err)
	}
}
