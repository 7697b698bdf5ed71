package main

import (
	"encoding/hex"
	"testing"

	"github.com/imashard/imashard/internal/tpmtest"
	"github.com/imashard/imashard/pkg/swtpm"
)

func mustDecodeHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// startSWTPM starts a swtpm on a socket in a temporary directory and stops
// it when the test ends. The test is skipped when swtpm is not installed.
func startSWTPM(t *testing.T) *swtpm.Instance {
	t.Helper()
	return tpmtest.Start(t)
}
