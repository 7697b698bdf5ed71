package pcr

import (
	"crypto/sha256"
	"errors"
	"testing"
)

func TestParseAlgNames(t *testing.T) {
	cases := map[string]Alg{
		"sha1": SHA1, "SHA256": SHA256, "sha384": SHA384, "sha512": SHA512,
		"sm3": SM3_256, "sm3-256": SM3_256, "sm3_256": SM3_256,
		"0x000b": SHA256, "tpm_alg_0x0027": Alg(0x27),
	}
	for name, want := range cases {
		got, err := ParseAlg(name)
		if err != nil {
			t.Errorf("ParseAlg(%q): %v", name, err)
			continue
		}
		if got != want {
			t.Errorf("ParseAlg(%q) = %v, want %v", name, got, want)
		}
	}

	if _, err := ParseAlg("md5"); err == nil {
		t.Error("ParseAlg(md5) succeeded, want an error")
	}
}

func TestAlgSizesAndHashes(t *testing.T) {
	for _, alg := range []Alg{SHA1, SHA256, SHA384, SHA512} {
		h, err := alg.New()
		if err != nil {
			t.Fatalf("%v.New: %v", alg, err)
		}
		if h.Size() != alg.Size() {
			t.Errorf("%v: hash size %d, Size() %d", alg, h.Size(), alg.Size())
		}
	}

	if _, err := SM3_256.New(); !errors.Is(err, ErrUnsupportedAlg) {
		t.Errorf("SM3_256.New error = %v, want ErrUnsupportedAlg", err)
	}
	if got := Alg(0x27).String(); got != "tpm_alg_0x0027" {
		t.Errorf("unknown alg name = %q", got)
	}
}

func TestValuesDiff(t *testing.T) {
	a := Values{}
	a.Set(SHA256, 10, Zero(SHA256))
	b := a.Clone()
	if err := a.Diff(b); err != nil {
		t.Fatalf("clone differs: %v", err)
	}

	sum := sha256.Sum256(nil)
	b.Set(SHA256, 10, sum[:])
	if a.Equal(b) {
		t.Error("values with different PCR 10 compare equal")
	}

	b = a.Clone()
	b.Set(SHA256, 11, Zero(SHA256))
	if err := a.Diff(b); err == nil {
		t.Error("missing PCR 11 not reported")
	}
}
