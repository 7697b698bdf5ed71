package tpm

import (
	"bytes"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"os"
	"slices"
	"testing"

	"github.com/imashard/imashard/pkg/pcr"
)

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func keylimeQuote(t testing.TB) (*Quote, any, pcr.Values) {
	t.Helper()
	q := &Quote{Attest: readTestdata(t, "keylime-quote.out"), Signature: readTestdata(t, "keylime-quotesig.out")}

	block, _ := pem.Decode(readTestdata(t, "keylime-akpub.pem"))
	if block == nil {
		t.Fatal("keylime-akpub.pem: no PEM block")
	}
	key, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}

	values, banks, err := ParseTPM2ToolsPCRs(readTestdata(t, "keylime-quotepcr.out"))
	if err != nil {
		t.Fatalf("ParseTPM2ToolsPCRs: %v", err)
	}
	if len(banks) != 1 || banks[0] != pcr.SHA256 {
		t.Fatalf("quotepcr banks = %v, want [sha256]", banks)
	}
	return q, key, values
}

var keylimeNonce, _ = hex.DecodeString("db1db298db6d60e6385b7231743e9c3056a18003")

func TestKeylimeQuoteVerifies(t *testing.T) {
	q, key, values := keylimeQuote(t)

	info, err := VerifyQuote(key, q, keylimeNonce, values)
	if err != nil {
		t.Fatalf("VerifyQuote: %v", err)
	}
	if !bytes.Equal(info.ExtraData, keylimeNonce) {
		t.Errorf("extraData = %x, want %x", info.ExtraData, keylimeNonce)
	}
	if got := info.Selection[pcr.SHA256]; len(info.Selection) != 1 || !slices.Equal(got, []int{15, 16, 22}) {
		t.Errorf("selection = %v, want sha256 [15 16 22]", info.Selection)
	}
	wantDigest := "ec1636c69c548fd09a165a4f874e5d1610a8fbe36241566017e92b17e144b971"
	if hex.EncodeToString(info.PCRDigest) != wantDigest {
		t.Errorf("pcrDigest = %x, want %s", info.PCRDigest, wantDigest)
	}
	if info.Clock != 0x176a {
		t.Errorf("clock = %d, want %d", info.Clock, 0x176a)
	}
	if !info.Safe {
		t.Error("safe = false, want true")
	}
}

func TestKeylimePCRValues(t *testing.T) {
	_, _, values := keylimeQuote(t)

	want := map[int]string{
		15: "0000000000000000000000000000000000000000000000000000000000000000",
		16: "9dbb22387e019c04da95477333546082ce313152c4a7f8a6e1d5f0c77f4fb6f0",
		22: "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
	}
	for index, hexValue := range want {
		got, ok := values.Get(pcr.SHA256, index)
		if !ok || hex.EncodeToString(got) != hexValue {
			t.Errorf("sha256 PCR %d = %x, want %s", index, got, hexValue)
		}
	}
	if n := len(values.Indexes(pcr.SHA256)); n != 3 {
		t.Errorf("%d PCRs decoded, want 3", n)
	}
}

func TestKeylimeFlippedPCRBit(t *testing.T) {
	q, key, values := keylimeQuote(t)

	for _, index := range []int{15, 16, 22} {
		bad := values.Clone()
		v, _ := bad.Get(pcr.SHA256, index)
		v[5] ^= 0x01
		_, err := VerifyQuote(key, q, keylimeNonce, bad)
		if !errors.Is(err, ErrPCRDigestMismatch) {
			t.Errorf("PCR %d flipped: err = %v, want ErrPCRDigestMismatch", index, err)
		}
	}
}

func TestKeylimeWrongNonce(t *testing.T) {
	q, key, values := keylimeQuote(t)

	wrong := bytes.Clone(keylimeNonce)
	wrong[0] ^= 0xff
	if _, err := VerifyQuote(key, q, wrong, values); !errors.Is(err, ErrNonceMismatch) {
		t.Errorf("err = %v, want ErrNonceMismatch", err)
	}
}

func TestKeylimeMissingPCR(t *testing.T) {
	q, key, values := keylimeQuote(t)

	delete(values[pcr.SHA256], 22)
	if _, err := VerifyQuote(key, q, keylimeNonce, values); !errors.Is(err, ErrMissingPCRValue) {
		t.Errorf("err = %v, want ErrMissingPCRValue", err)
	}
}

func TestKeylimeTamperedBytes(t *testing.T) {
	q, key, values := keylimeQuote(t)

	cases := []struct {
		name string
		edit func(q *Quote)
		want error
	}{
		{"magic", func(q *Quote) { q.Attest[0] ^= 1 }, ErrBadMagic},
		{"type", func(q *Quote) { q.Attest[5] ^= 1 }, ErrNotQuote},
		{"clock", func(q *Quote) { q.Attest[0x47] ^= 1 }, ErrBadSignature},
		{"pcrDigest", func(q *Quote) { q.Attest[len(q.Attest)-1] ^= 1 }, ErrBadSignature},
		{"signature", func(q *Quote) { q.Signature[40] ^= 1 }, ErrBadSignature},
		{"truncated attest", func(q *Quote) { q.Attest = q.Attest[:len(q.Attest)-1] }, ErrMalformedQuote},
		{"trailing attest", func(q *Quote) { q.Attest = append(q.Attest, 0) }, ErrMalformedQuote},
		{"truncated signature", func(q *Quote) { q.Signature = q.Signature[:10] }, ErrMalformedQuote},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			bad := &Quote{Attest: bytes.Clone(q.Attest), Signature: bytes.Clone(q.Signature)}
			c.edit(bad)
			if _, err := VerifyQuote(key, bad, keylimeNonce, values); !errors.Is(err, c.want) {
				t.Errorf("err = %v, want %v", err, c.want)
			}
		})
	}
}

func TestKeylimeAKName(t *testing.T) {
	public := readTestdata(t, "keylime-ak.pub")
	wantName := readTestdata(t, "keylime-ak.name")

	key, name, err := ParseAKPublic(public)
	if err != nil {
		t.Fatalf("ParseAKPublic: %v", err)
	}
	if !bytes.Equal(name, wantName) {
		t.Errorf("name = %x, want %x", name, wantName)
	}
	if !bytes.HasPrefix(name, []byte{0x00, 0x0b, 0x2d, 0x3f, 0xb7, 0x83, 0x0f, 0x6c}) {
		t.Errorf("name = %x, want prefix 000b2d3fb7830f6c", name)
	}

	// The key in ak.pub is the one akpub.pem holds, so it verifies the quote.
	q, _, values := keylimeQuote(t)
	if _, err := VerifyQuote(key, q, keylimeNonce, values); err != nil {
		t.Errorf("VerifyQuote with the key from ak.pub: %v", err)
	}
}

func TestParseAKPublicRejects(t *testing.T) {
	public := readTestdata(t, "keylime-ak.pub")

	if _, _, err := ParseAKPublic(public[:len(public)-1]); !errors.Is(err, ErrMalformedPublic) {
		t.Errorf("truncated: err = %v, want ErrMalformedPublic", err)
	}

	// objectAttributes sit after size (2), type (2) and nameAlg (2). Clearing
	// restricted (bit 16) makes it a key that could sign a forged quote.
	unrestricted := bytes.Clone(public)
	unrestricted[7] &^= 0x01
	if _, _, err := ParseAKPublic(unrestricted); !errors.Is(err, ErrNotAK) {
		t.Errorf("unrestricted key: err = %v, want ErrNotAK", err)
	}
}

func TestTPM2ToolsPCRFileRoundTrip(t *testing.T) {
	original := readTestdata(t, "keylime-quotepcr.out")
	values, banks, err := ParseTPM2ToolsPCRs(original)
	if err != nil {
		t.Fatal(err)
	}

	var out bytes.Buffer
	if err := WriteTPM2ToolsPCRs(&out, banks, []int{15, 16, 22}, values); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), original) {
		t.Errorf("rewritten file differs from tpm2-tools' file:\n got %x\nwant %x", out.Bytes(), original)
	}
}

func TestTPM2ToolsPCRFileManyPCRs(t *testing.T) {
	values := make(pcr.Values)
	var indexes []int
	for index := 0; index < 24; index++ {
		indexes = append(indexes, index)
		values.Set(pcr.SHA1, index, bytes.Repeat([]byte{byte(index)}, 20))
		values.Set(pcr.SHA256, index, bytes.Repeat([]byte{byte(100 + index)}, 32))
	}

	var out bytes.Buffer
	if err := WriteTPM2ToolsPCRs(&out, []pcr.Alg{pcr.SHA256, pcr.SHA1}, indexes, values); err != nil {
		t.Fatal(err)
	}
	got, banks, err := ParseTPM2ToolsPCRs(out.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if len(banks) != 2 || banks[0] != pcr.SHA256 || banks[1] != pcr.SHA1 {
		t.Errorf("banks = %v, want [sha256 sha1]", banks)
	}
	if err := got.Diff(values); err != nil {
		t.Error(err)
	}
}

func TestWritePCRsFormats(t *testing.T) {
	values := make(pcr.Values)
	values.Set(pcr.SHA256, 10, bytes.Repeat([]byte{0xab}, 32))
	values.Set(pcr.SHA256, 2, bytes.Repeat([]byte{0x01}, 32))

	var evm bytes.Buffer
	if err := WritePCRs(&evm, values, FormatEvmctl); err != nil {
		t.Fatal(err)
	}
	wantEvm := "PCR-02: " + hex.EncodeToString(bytes.Repeat([]byte{0x01}, 32)) + "\nPCR-10: " + hex.EncodeToString(bytes.Repeat([]byte{0xab}, 32)) + "\n"
	if evm.String() != wantEvm {
		t.Errorf("evmctl:\n%s\nwant\n%s", evm.String(), wantEvm)
	}

	var yaml bytes.Buffer
	if err := WritePCRs(&yaml, values, FormatYAML); err != nil {
		t.Fatal(err)
	}
	wantYAML := "sha256:\n  2: 0x" + hex.EncodeToString(bytes.Repeat([]byte{0x01}, 32)) + "\n  10: 0x" + "ABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABAB" + "\n"
	if yaml.String() != wantYAML {
		t.Errorf("yaml:\n%s\nwant\n%s", yaml.String(), wantYAML)
	}

	var js bytes.Buffer
	if err := WritePCRs(&js, values, FormatJSON); err != nil {
		t.Fatal(err)
	}
	back, err := ParsePCRsJSON(js.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if err := back.Diff(values); err != nil {
		t.Errorf("JSON round trip: %v", err)
	}

	values.Set(pcr.SHA1, 10, make([]byte, 20))
	if err := WritePCRs(&evm, values, FormatEvmctl); err == nil {
		t.Error("evmctl format with two banks: no error")
	}
}
