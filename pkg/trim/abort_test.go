package trim

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestAbortPendingRemovesItsCarryFile checks that an aborted staged trim
// clears its intent and removes the carry file it wrote, while a carry
// file the state still names stays.
func TestAbortPendingRemovesItsCarryFile(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"carry-2.bin", "carry-5.bin"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("entries"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	st := &State{
		Version:   stateVersion,
		LiveStart: 10,
		CarryFile: "carry-2.bin",
		Carry:     2,
		Pending: &PendingTrim{
			Count:  3,
			Staged: true,
			After:  &State{Version: stateVersion, LiveStart: 10, CarryFile: "carry-5.bin", Carry: 5},
		},
	}
	cause := errors.New("kexec loaded")

	if err := abortPending(dir, st, cause); !errors.Is(err, cause) {
		t.Fatalf("abortPending returned %v, want the cause", err)
	}

	saved, err := LoadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if saved.Pending != nil || saved.CarryFile != "carry-2.bin" {
		t.Errorf("saved state %+v, want no intent and carry-2.bin", saved)
	}
	if _, err := os.Stat(filepath.Join(dir, "carry-5.bin")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the aborted trim's carry file is still there (%v)", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "carry-2.bin")); err != nil {
		t.Errorf("the state's own carry file is gone: %v", err)
	}
}
