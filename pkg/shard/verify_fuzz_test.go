package shard

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
)

func readSeedAK(t testing.TB) crypto.PublicKey {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "seed-ak.pem"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatal("testdata/seed-ak.pem: no PEM block")
	}
	key, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// TestVerifyStoredShard verifies a shard written and quoted by an earlier
// build, so a change that breaks reading existing files fails here.
func TestVerifyStoredShard(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "seed-shard.ims"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, FileName(0)), data, 0o644); err != nil {
		t.Fatal(err)
	}
	report, err := Verify(context.Background(), VerifyOptions{Dir: dir, AKPublic: readSeedAK(t)})
	if err != nil {
		t.Fatalf("stored shard: %v", err)
	}
	if report.Final.NextIndex != 6 {
		t.Errorf("stored shard covers %d entries, want 6", report.Final.NextIndex)
	}
	if got := report.Final.Values["sha1"]["10"]; got == "" || got == "0000000000000000000000000000000000000000" {
		t.Errorf("verified sha1 PCR 10 = %q, want the replayed value", got)
	}
}

// FuzzVerify mutates a real, quoted shard and runs the whole verifier on it:
// decoder, log reader, replay and quote checks. Only the unmodified seed may
// pass.
func FuzzVerify(f *testing.F) {
	seed, err := os.ReadFile(filepath.Join("testdata", "seed-shard.ims"))
	if err != nil {
		f.Fatal(err)
	}
	key := readSeedAK(f)
	f.Add(seed)
	f.Add(seed[:len(seed)-1])
	f.Add(seed[:200])

	// One directory per worker process keeps each run to one file write.
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, FileName(0)), data, 0o644); err != nil {
			t.Fatal(err)
		}
		report, err := Verify(context.Background(), VerifyOptions{Dir: dir, AKPublic: key})
		if err == nil && string(data) != string(seed) {
			t.Fatalf("verify accepted a changed shard of %d bytes", len(data))
		}
		if err != nil && report.OK {
			t.Fatalf("report OK with error %v", err)
		}
	})
}
