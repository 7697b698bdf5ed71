package trim

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoadState checks that LoadState rejects or accepts any file without
// panicking, and that what it accepts is consistent.
func FuzzLoadState(f *testing.F) {
	f.Add([]byte(`{"version": 1, "live_start": 12}`))
	f.Add([]byte(`{"version": 1, "live_start": 3, "carry_file": "carry-3.bin", "carry": 2}`))
	f.Add([]byte(`{"version": 1, "live_start": 1, "pending": {"count": 2, "list_entries": 4, "head_sha256": "AA==", "kept_sha256": "AA==", "after": {"version": 1, "live_start": 3}}}`))
	f.Add([]byte(`{"version": 2}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, StateFile), data, 0o644); err != nil {
			t.Fatal(err)
		}
		st, err := LoadState(dir)
		if err != nil {
			return
		}
		if st.LiveStart < 0 || st.Carry < 0 || st.Version != stateVersion {
			t.Fatalf("LoadState accepted an invalid state: %+v", st)
		}
		if p := st.Pending; p != nil && (p.Count < 1 || p.ListEntries < p.Count || p.After == nil) {
			t.Fatalf("LoadState accepted an invalid pending trim: %+v", p)
		}
	})
}
