package tpm

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"testing"
)

// spkiTestKeys returns fresh RSA and ECDSA public keys of every supported
// size and curve, named for the failure messages.
func spkiTestKeys(t *testing.T) map[string]crypto.PublicKey {
	t.Helper()
	keys := map[string]crypto.PublicKey{}
	for _, bits := range []int{2048, 3072} {
		k, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			t.Fatal(err)
		}
		keys["rsa-"+big.NewInt(int64(bits)).String()] = &k.PublicKey
	}
	for name, curve := range map[string]elliptic.Curve{"p256": elliptic.P256(), "p384": elliptic.P384(), "p521": elliptic.P521()} {
		// Two keys a curve, so that a point with a leading zero byte in a
		// coordinate is likely to turn up across runs.
		for _, n := range []string{"a", "b"} {
			k, err := ecdsa.GenerateKey(curve, rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			keys["ecdsa-"+name+"-"+n] = &k.PublicKey
		}
	}
	return keys
}

func TestMarshalPKIXMatchesX509(t *testing.T) {
	for name, key := range spkiTestKeys(t) {
		got, err := MarshalPKIXPublicKey(key)
		if err != nil {
			t.Fatalf("%s: MarshalPKIXPublicKey: %v", name, err)
		}
		want, err := x509.MarshalPKIXPublicKey(key)
		if err != nil {
			t.Fatalf("%s: x509.MarshalPKIXPublicKey: %v", name, err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: DER differs from crypto/x509's\n got %x\nwant %x", name, got, want)
		}
	}
}

func TestParsePKIXReadsX509Output(t *testing.T) {
	for name, key := range spkiTestKeys(t) {
		der, err := x509.MarshalPKIXPublicKey(key)
		if err != nil {
			t.Fatalf("%s: x509.MarshalPKIXPublicKey: %v", name, err)
		}
		got, err := ParsePKIXPublicKey(der)
		if err != nil {
			t.Fatalf("%s: ParsePKIXPublicKey: %v", name, err)
		}
		want, err := x509.ParsePKIXPublicKey(der)
		if err != nil {
			t.Fatalf("%s: x509.ParsePKIXPublicKey: %v", name, err)
		}
		type equaler interface{ Equal(crypto.PublicKey) bool }
		if !got.(equaler).Equal(want) {
			t.Errorf("%s: parsed key %#v, crypto/x509 parsed %#v", name, got, want)
		}
		if !got.(equaler).Equal(key) {
			t.Errorf("%s: parsed key differs from the original", name)
		}
	}
}

func TestMarshalPKIXRejectsOtherKeys(t *testing.T) {
	edPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	x25519, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]crypto.PublicKey{
		"ed25519":       edPub,
		"ecdsa-p224":    &p224.PublicKey,
		"x25519":        x25519.PublicKey(),
		"rsa-zero-n":    &rsa.PublicKey{N: big.NewInt(0), E: 65537},
		"rsa-missing-n": &rsa.PublicKey{E: 65537},
		"nil":           nil,
	}
	for name, key := range cases {
		der, err := MarshalPKIXPublicKey(key)
		if !errors.Is(err, ErrUnsupportedKey) {
			t.Errorf("%s: MarshalPKIXPublicKey = %x, %v; want ErrUnsupportedKey", name, der, err)
		}
	}
}

// spkiDER builds a SubjectPublicKeyInfo with encoding/asn1 from free-form
// parts, for inputs that crypto/x509 never writes. A nil params leaves the
// parameters out.
func spkiDER(t *testing.T, alg asn1.ObjectIdentifier, params []byte, key []byte) []byte {
	t.Helper()
	type algorithmIdentifier struct {
		Algorithm  asn1.ObjectIdentifier
		Parameters asn1.RawValue `asn1:"optional"`
	}
	spki := struct {
		Algorithm algorithmIdentifier
		PublicKey asn1.BitString
	}{
		Algorithm: algorithmIdentifier{Algorithm: alg},
		PublicKey: asn1.BitString{Bytes: key, BitLength: 8 * len(key)},
	}
	if params != nil {
		spki.Algorithm.Parameters = asn1.RawValue{FullBytes: params}
	}
	der, err := asn1.Marshal(spki)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

type rsaKeyASN1 struct {
	N *big.Int
	E int
}

var (
	asn1RSAEncryption = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}
	asn1ECPublicKey   = asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}
)

func TestSPKIObjectIdentifiers(t *testing.T) {
	cases := []struct {
		contents []byte
		oid      asn1.ObjectIdentifier
	}{
		{oidRSAEncryption, asn1RSAEncryption},
		{oidECPublicKey, asn1ECPublicKey},
		{oidP256, asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}},
		{oidP384, asn1.ObjectIdentifier{1, 3, 132, 0, 34}},
		{oidP521, asn1.ObjectIdentifier{1, 3, 132, 0, 35}},
	}
	for _, c := range cases {
		want, err := asn1.Marshal(c.oid)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendTLV(nil, tagOID, c.contents); !bytes.Equal(got, want) {
			t.Errorf("OID %v: encoded %x, encoding/asn1 writes %x", c.oid, got, want)
		}
		if got := oidString(c.contents); got != c.oid.String() {
			t.Errorf("oidString(%x) = %q, want %q", c.contents, got, c.oid.String())
		}
	}
}

func TestOIDStringUndecodable(t *testing.T) {
	for _, oid := range [][]byte{nil, {0x86}, {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}} {
		if got, want := oidString(oid), fmt.Sprintf("%x", oid); got != want {
			t.Errorf("oidString(%x) = %q, want the hex %q", oid, got, want)
		}
	}
}

func TestParsePKIXRejectsBadInput(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaBody, err := asn1.Marshal(rsaKeyASN1{N: rsaKey.N, E: rsaKey.E})
	if err != nil {
		t.Fatal(err)
	}
	negBody, err := asn1.Marshal(rsaKeyASN1{N: big.NewInt(-7), E: 65537})
	if err != nil {
		t.Fatal(err)
	}
	zeroExpBody, err := asn1.Marshal(rsaKeyASN1{N: rsaKey.N, E: 0})
	if err != nil {
		t.Fatal(err)
	}
	hugeExpBody, err := asn1.Marshal(struct{ N, E *big.Int }{rsaKey.N, new(big.Int).Lsh(big.NewInt(1), 70)})
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	point, err := ecKey.PublicKey.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	offCurve := bytes.Clone(point)
	offCurve[len(offCurve)-1] ^= 1
	p256Params, _ := asn1.Marshal(asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7})
	p224Params, _ := asn1.Marshal(asn1.ObjectIdentifier{1, 3, 132, 0, 33})
	good, err := MarshalPKIXPublicKey(&rsaKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	edDER, err := x509.MarshalPKIXPublicKey(ed25519.PublicKey(make([]byte, ed25519.PublicKeySize)))
	if err != nil {
		t.Fatal(err)
	}
	// good starts with 30 82 LL LL: a SEQUENCE with a two-octet length.
	longLength := append([]byte{0x30, 0x83, 0x00}, good[2:]...)
	indefinite := append(append([]byte{0x30, 0x80}, good[4:]...), 0, 0)
	unusedBits := bytes.Clone(good)
	unusedBits[bytes.Index(good, []byte{0x03, 0x82})+4] = 1
	// A modulus with a redundant leading zero octet is valid BER but not DER.
	paddedBody, err := asn1.Marshal(struct {
		N asn1.RawValue
		E int
	}{asn1.RawValue{Tag: asn1.TagInteger, Bytes: append([]byte{0, 0}, rsaKey.N.Bytes()...)}, rsaKey.E})
	if err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name string
		der  []byte
		want error
	}{
		{"empty", nil, ErrMalformedSPKI},
		{"truncated", good[:len(good)-1], ErrMalformedSPKI},
		{"trailing-byte", append(bytes.Clone(good), 0), ErrMalformedSPKI},
		{"long-length-form", longLength, ErrMalformedSPKI},
		{"indefinite-length", indefinite, ErrMalformedSPKI},
		{"unused-bits", unusedBits, ErrMalformedSPKI},
		{"padded-modulus", spkiDER(t, asn1RSAEncryption, asn1.NullBytes, paddedBody), ErrMalformedSPKI},
		{"rsa-no-null-params", spkiDER(t, asn1RSAEncryption, nil, rsaBody), ErrMalformedSPKI},
		{"rsa-oid-params", spkiDER(t, asn1RSAEncryption, p256Params, rsaBody), ErrMalformedSPKI},
		{"rsa-negative-modulus", spkiDER(t, asn1RSAEncryption, asn1.NullBytes, negBody), ErrMalformedSPKI},
		{"rsa-zero-exponent", spkiDER(t, asn1RSAEncryption, asn1.NullBytes, zeroExpBody), ErrMalformedSPKI},
		{"rsa-huge-exponent", spkiDER(t, asn1RSAEncryption, asn1.NullBytes, hugeExpBody), ErrMalformedSPKI},
		{"rsa-body-trailing", spkiDER(t, asn1RSAEncryption, asn1.NullBytes, append(bytes.Clone(rsaBody), 0)), ErrMalformedSPKI},
		{"ec-no-params", spkiDER(t, asn1ECPublicKey, nil, point), ErrMalformedSPKI},
		{"ec-null-params", spkiDER(t, asn1ECPublicKey, asn1.NullBytes, point), ErrMalformedSPKI},
		{"ec-p224", spkiDER(t, asn1ECPublicKey, p224Params, point), ErrUnsupportedKey},
		{"ec-off-curve", spkiDER(t, asn1ECPublicKey, p256Params, offCurve), ErrMalformedSPKI},
		{"ec-compressed", spkiDER(t, asn1ECPublicKey, p256Params, append([]byte{2}, point[1:33]...)), ErrMalformedSPKI},
		{"ed25519", edDER, ErrUnsupportedKey},
	}
	for _, c := range cases {
		key, err := ParsePKIXPublicKey(c.der)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: ParsePKIXPublicKey = %v, %v; want %v", c.name, key, err, c.want)
		}
	}
}

func FuzzParsePKIXPublicKey(f *testing.F) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		f.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	for _, k := range []crypto.PublicKey{&rsaKey.PublicKey, &ecKey.PublicKey} {
		der, err := x509.MarshalPKIXPublicKey(k)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(der)
	}
	f.Fuzz(func(t *testing.T, der []byte) {
		key, err := ParsePKIXPublicKey(der)
		if err != nil {
			// Whatever crypto/x509 writes for a supported key must parse.
			want, xerr := x509.ParsePKIXPublicKey(der)
			if xerr != nil {
				return
			}
			canonical, merr := x509.MarshalPKIXPublicKey(want)
			if merr != nil || !bytes.Equal(canonical, der) {
				return
			}
			if _, unsupported := MarshalPKIXPublicKey(want); unsupported == nil {
				t.Fatalf("rejected %x, which crypto/x509 writes for %T: %v", der, want, err)
			}
			return
		}
		// A key this code accepts must be one crypto/x509 accepts too and
		// must encode back to the same DER.
		want, xerr := x509.ParsePKIXPublicKey(der)
		if xerr != nil {
			t.Fatalf("accepted %x, which crypto/x509 rejects: %v", der, xerr)
		}
		if !key.(interface{ Equal(crypto.PublicKey) bool }).Equal(want) {
			t.Fatalf("parsed %#v from %x, crypto/x509 parsed %#v", key, der, want)
		}
		again, err := MarshalPKIXPublicKey(key)
		if err != nil {
			t.Fatalf("re-encode parsed key: %v", err)
		}
		if !bytes.Equal(again, der) {
			t.Fatalf("re-encoded %x as %x", der, again)
		}
	})
}
