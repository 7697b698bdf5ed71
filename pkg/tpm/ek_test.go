package tpm

import (
	"crypto/x509"
	"reflect"
	"slices"
	"testing"

	"github.com/imashard/imashard/pkg/pcr"
	"github.com/imashard/imashard/pkg/swtpm"
)

func TestSwtpmEKCertificate(t *testing.T) {
	if err := swtpm.Available(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	stateDir := t.TempDir()
	if err := swtpm.Manufacture(stateDir, "sha1,sha256,sha384"); err != nil {
		t.Fatal(err)
	}
	_, tp := startSwtpm(t, stateDir)

	banks, err := tp.Banks()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(banks, []pcr.Alg{pcr.SHA1, pcr.SHA256, pcr.SHA384}) {
		t.Errorf("banks after allocating sha1,sha256,sha384 = %v", banks)
	}

	ek, err := tp.ReadEK("rsa")
	if err != nil {
		t.Fatal(err)
	}
	if ek.Certificate == nil {
		t.Fatal("no RSA EK certificate read from NV 0x01c00002")
	}
	cert, err := x509.ParseCertificate(ek.Certificate)
	if err != nil {
		t.Fatalf("EK certificate: %v", err)
	}
	if !reflect.DeepEqual(cert.PublicKey, ek.PublicKey) {
		t.Error("the EK certificate certifies a different key than the derived RSA EK")
	}
}

func TestSwtpmEKWithoutCertificate(t *testing.T) {
	_, tp := startSwtpm(t, "")
	for _, alg := range []string{"rsa", "ecc"} {
		ek, err := tp.ReadEK(alg)
		if err != nil {
			t.Fatalf("ReadEK(%s): %v", alg, err)
		}
		if ek.Certificate != nil {
			t.Errorf("%s EK certificate on an unprovisioned swtpm: %d bytes", alg, len(ek.Certificate))
		}
		if ek.PublicKey == nil {
			t.Errorf("%s EK has no public key", alg)
		}
	}
}
