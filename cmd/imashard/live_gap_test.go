package main

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imashard/imashard/pkg/shard"
	"github.com/imashard/imashard/pkg/trim"
)

// TestLiveStartPastChainEnd removes the last shard of a trimmed chain.
// The chain that is left verifies by itself, but the live list starts
// where the removed shard ended. The entries it held are in no shard and
// no longer in the list, so snapshot and verify --live must name the hole
// instead of blaming the TPM.
func TestLiveStartPastChainEnd(t *testing.T) {
	inst := startSWTPM(t)
	src := filepath.Join("..", "..", "pkg", "shard", "testdata", "sha1.log.bin")
	work := t.TempDir()
	logPath := filepath.Join(work, "binary_runtime_measurements")
	dir := filepath.Join(work, "chain")

	for _, cut := range [][2]int{{0, 50}, {50, 120}} {
		measureInto(t, inst.Spec(), src, logPath, cut[0], cut[1])
		if _, err := runCLI(t, "snapshot", "--dir", dir, "--log", logPath, "--tpm", inst.Spec()); err != nil {
			t.Fatalf("snapshot of entries %d to %d: %v", cut[0], cut[1], err)
		}
	}

	// What a count trim of both shards leaves: the list from history
	// index 120 on, and the state that places it there.
	trimmed := filepath.Join(work, "trimmed", "binary_runtime_measurements")
	os.MkdirAll(filepath.Dir(trimmed), 0o755)
	measureInto(t, inst.Spec(), src, trimmed, 120, 130)
	st, _ := json.Marshal(map[string]any{"version": 1, "live_start": 120})
	if err := os.WriteFile(filepath.Join(dir, trim.StateFile), st, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, shard.FileName(1))); err != nil {
		t.Fatal(err)
	}

	exportDir := t.TempDir()
	if _, err := runCLI(t, "export", "--tpm2-tools", exportDir, filepath.Join(dir, shard.FileName(0))); err != nil {
		t.Fatalf("export: %v", err)
	}
	akPEM := filepath.Join(exportDir, "ak.pem")
	_, err := runCLI(t, "verify", "--ak", akPEM, dir, "--live", "--tpm", inst.Spec(), "--log", trimmed)
	if !errors.Is(err, trim.ErrGap) || !strings.Contains(err.Error(), "50 to 119") {
		t.Errorf("verify --live = %v, want ErrGap naming entries 50 to 119", err)
	}
	_, err = runCLI(t, "snapshot", "--dir", dir, "--log", trimmed, "--tpm", inst.Spec())
	if !errors.Is(err, trim.ErrGap) || !strings.Contains(err.Error(), "50 to 119") {
		t.Errorf("snapshot = %v, want ErrGap naming entries 50 to 119", err)
	}
	if _, err := os.Stat(filepath.Join(dir, shard.FileName(1))); err == nil {
		t.Error("snapshot wrote a shard over the hole")
	}

	// Without any shard the snapshot would start a new chain at history
	// index 0 from a list that starts at 120.
	if err := os.Remove(filepath.Join(dir, shard.FileName(0))); err != nil {
		t.Fatal(err)
	}
	_, err = runCLI(t, "snapshot", "--dir", dir, "--log", trimmed, "--tpm", inst.Spec())
	if !errors.Is(err, trim.ErrGap) || !strings.Contains(err.Error(), "0 to 119") {
		t.Errorf("snapshot without shards = %v, want ErrGap naming entries 0 to 119", err)
	}
	if _, err := os.Stat(filepath.Join(dir, shard.FileName(0))); err == nil {
		t.Error("snapshot started a new chain over the hole")
	}
}
