package pcr

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func sampleValues() Values {
	v := Values{}
	v.Set(SHA1, 10, bytes.Repeat([]byte{0xab}, 20))
	v.Set(SHA1, 0, make([]byte, 20))
	v.Set(SHA256, 10, bytes.Repeat([]byte{0x01}, 32))
	v.Set(SHA384, 11, bytes.Repeat([]byte{0xfe}, 48))
	v.Set(SHA512, 23, bytes.Repeat([]byte{0x7f}, 64))
	return v
}

func TestTPM2PCRReadRealOutput(t *testing.T) {
	data, err := os.ReadFile("testdata/tpm2_pcrread.yaml")
	if err != nil {
		t.Fatal(err)
	}
	v, err := ParseTPM2PCRRead(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	sha1Digest, _ := hex.DecodeString("f1d2d2f924e986ac86fdf7b36c94bcdf32beec15")
	sha256Digest, _ := hex.DecodeString("b5bb9d8014a0f9b1d61e21e796d78dccdf1352f23cd32812f4850b878ae4944c")
	want1 := sha1.Sum(append(make([]byte, 20), sha1Digest...))
	want256 := sha256.Sum256(append(make([]byte, 32), sha256Digest...))

	if got, _ := v.Get(SHA1, 10); !bytes.Equal(got, want1[:]) {
		t.Errorf("sha1 PCR 10 = %x, want %x", got, want1)
	}
	if got, _ := v.Get(SHA256, 10); !bytes.Equal(got, want256[:]) {
		t.Errorf("sha256 PCR 10 = %x, want %x", got, want256)
	}
	if got, ok := v.Get(SHA1, 0); !ok || !bytes.Equal(got, make([]byte, 20)) {
		t.Errorf("sha1 PCR 0 = %x", got)
	}

	var out bytes.Buffer
	if err := WriteTPM2PCRRead(&out, v); err != nil {
		t.Fatal(err)
	}
	if out.String() != string(data) {
		t.Errorf("written YAML differs from tpm2_pcrread's:\n%s\nwant\n%s", out.String(), data)
	}
}

func TestTPM2PCRReadRoundTrip(t *testing.T) {
	var out bytes.Buffer
	if err := WriteTPM2PCRRead(&out, sampleValues()); err != nil {
		t.Fatal(err)
	}
	v, err := ParseTPM2PCRRead(&out)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Diff(sampleValues()); err != nil {
		t.Error(err)
	}
}

func TestEvmctlRoundTrip(t *testing.T) {
	want := sampleValues()
	for _, alg := range want.Banks() {
		var out bytes.Buffer
		if err := WriteEvmctl(&out, want, alg); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(out.String(), "PCR-") {
			t.Errorf("%s: %q", alg, out.String())
		}
		v, err := ParseEvmctl(&out, alg)
		if err != nil {
			t.Fatal(err)
		}
		bank := Values{alg: want[alg]}
		if err := v.Diff(bank); err != nil {
			t.Errorf("%s: %v", alg, err)
		}
	}
	if err := WriteEvmctl(&bytes.Buffer{}, want, SM3_256); err == nil {
		t.Error("writing an absent bank succeeded")
	}
}

func TestEvmctlIBMSpacedBytes(t *testing.T) {
	data, err := os.ReadFile("../imalog/testdata/ibmtss__utils_imakvtpcr10.txt")
	if err != nil {
		t.Fatal(err)
	}
	v, err := ParseEvmctl(bytes.NewReader(data), 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := v.Banks(); len(got) != 4 {
		t.Fatalf("banks = %v, want sha1 sha256 sha384 sha512", got)
	}
	if got, _ := v.Get(SHA1, 10); hex.EncodeToString(got) != "9be6bac02bf18d09d17e726c2df00bca4e8831ea" {
		t.Errorf("sha1 PCR 10 = %x", got)
	}
}

func TestEvmctlErrors(t *testing.T) {
	cases := []string{
		"PCR-10 abcd\n",
		"PCR-xx: " + strings.Repeat("00", 20) + "\n",
		"PCR-10: zz\n",
		"PCR-10: " + strings.Repeat("00", 21) + "\n",
		"nothing here\n",
	}
	for _, text := range cases {
		if _, err := ParseEvmctl(strings.NewReader(text), 0); !errors.Is(err, ErrInvalidPCRFile) {
			t.Errorf("%q: err = %v", text, err)
		}
	}
	if _, err := ParseEvmctl(strings.NewReader("PCR-10: "+strings.Repeat("00", 20)+"\n"), SHA256); !errors.Is(err, ErrInvalidPCRFile) {
		t.Errorf("20-byte value accepted for sha256: %v", err)
	}
}

func TestSysfsRoundTrip(t *testing.T) {
	dir := t.TempDir()
	want := sampleValues()
	if err := WriteSysfs(dir, want); err != nil {
		t.Fatal(err)
	}
	content, err := os.ReadFile(filepath.Join(dir, "pcr-sha1", "10"))
	if err != nil || string(content) != strings.Repeat("AB", 20)+"\n" {
		t.Errorf("sysfs file = %q, %v; the kernel prints upper-case hex and a newline", content, err)
	}

	v, err := ReadSysfs(dir, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Diff(want); err != nil {
		t.Error(err)
	}

	v, err = ReadSysfs(dir, []Alg{SHA1}, []int{10})
	if err != nil || len(v) != 1 || len(v[SHA1]) != 1 {
		t.Errorf("filtered read = %v, %v", v, err)
	}
	v, err = ReadSysfs(filepath.Join(dir, "pcr-sha256", "10"), nil, nil)
	if err != nil || len(v[SHA256]) != 1 {
		t.Errorf("single file = %v, %v", v, err)
	}
	if _, err := ReadSysfs(dir, []Alg{SHA1}, []int{5}); err == nil {
		t.Error("a missing PCR file was not reported")
	}
	if _, err := ReadSysfs(t.TempDir(), nil, nil); !errors.Is(err, ErrInvalidPCRFile) {
		t.Errorf("empty directory: %v", err)
	}
}

func TestReadValuesFileDetectsFormat(t *testing.T) {
	dir := t.TempDir()
	want := sampleValues()
	if err := WriteSysfs(filepath.Join(dir, "tpm0"), want); err != nil {
		t.Fatal(err)
	}
	var yaml, evm bytes.Buffer
	_ = WriteTPM2PCRRead(&yaml, want)
	_ = WriteEvmctl(&evm, want, SHA256)
	os.WriteFile(filepath.Join(dir, "pcrs.yaml"), yaml.Bytes(), 0o644)
	os.WriteFile(filepath.Join(dir, "pcrs.evm"), evm.Bytes(), 0o644)

	for _, path := range []string{filepath.Join(dir, "tpm0"), filepath.Join(dir, "pcrs.yaml")} {
		v, err := ReadValuesFile(path)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if err := v.Diff(want); err != nil {
			t.Errorf("%s: %v", path, err)
		}
	}
	v, err := ReadValuesFile("sha256," + filepath.Join(dir, "pcrs.evm"))
	if err != nil || v.Diff(Values{SHA256: want[SHA256]}) != nil {
		t.Errorf("evmctl file: %v, %v", v, err)
	}
}

func TestReadValuesFileRejectsOversizedFile(t *testing.T) {
	// Each line is a valid evmctl line, so only the size bound rejects the
	// file. The same bound keeps /dev/zero from exhausting memory.
	line := "PCR-10: " + strings.Repeat("ab", 20) + "\n"
	data := strings.Repeat(line, (2<<20)/len(line))
	path := filepath.Join(t.TempDir(), "pcrs.evm")
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}

	_, err := ReadValuesFile("sha1," + path)
	if !errors.Is(err, ErrInvalidPCRFile) {
		t.Fatalf("ReadValuesFile of %d bytes: err = %v, want ErrInvalidPCRFile", len(data), err)
	}
	if !strings.Contains(err.Error(), path) {
		t.Errorf("error %q does not name the file", err)
	}
}
