// Package tpmtest starts swtpm instances for tests that need a real TPM.
package tpmtest

import (
	"testing"

	"github.com/imashard/imashard/pkg/swtpm"
)

// Start starts a swtpm on a socket in a temporary directory and stops it
// when the test ends. It skips the test when swtpm is not installed.
func Start(t testing.TB) *swtpm.Instance {
	t.Helper()
	if err := swtpm.Available(); err != nil {
		t.Skipf("swtpm not installed: %v", err)
	}
	inst, err := swtpm.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inst.Stop() })
	return inst
}
