package imalog

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"
	"weak"

	"github.com/imashard/imashard/pkg/pcr"
)

// b1Hex is a minimal ima-ng entry written by a little-endian kernel.
const b1Hex = "0a000000 da451298750d9fe6b3509ddde65c11a99212e60a 06000000 696d612d6e67 33000000" +
	"28000000 7368613235363a00 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" +
	"03000000 2f6100"

// b2Hex is the same event from a big-endian host without ima_canonical_fmt.
const b2Hex = "0000000a 3d5c9d477c0b02fad443da2ad641309247b48bdf 00000006 696d612d6e67 00000033" +
	"00000028 7368613235363a00 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" +
	"00000003 2f6100"

// b5Hex is a legacy ima entry for "/a" with the SHA-1 of the empty file.
const b5Hex = "0a000000 c0b1d18afd11b1d28af4566dd410cded48175ecb 03000000 696d61" +
	"da39a3ee5e6b4b0d3255bfef95601890afd80709 02000000 2f61"

// A violation from a kernel whose IMA hash is sha256.
const violationHex = "0a000000 0000000000000000000000000000000000000000 06000000 696d612d6e67 37000000" +
	"28000000 7368613235363a00 0000000000000000000000000000000000000000000000000000000000000000" +
	"07000000 2f746d702f7800"

func TestReaderLittleEndian(t *testing.T) {
	entries, r, err := readBinary(t, mustHex(t, b1Hex), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Fatalf("got %d entries, want 1", len(entries))
	}
	e := entries[0]
	if e.PCR != 10 || e.TemplateName != "ima-ng" || e.Offset != 0 || e.Index != 0 {
		t.Errorf("entry = pcr %d name %q offset %d index %d", e.PCR, e.TemplateName, e.Offset, e.Index)
	}
	if r.ByteOrder() != LittleEndian {
		t.Errorf("byte order = %v, want little-endian", r.ByteOrder())
	}
	if r.Offset() != 89 {
		t.Errorf("offset = %d, want 89", r.Offset())
	}
	if got := hex.EncodeToString(e.TemplateDigest); got != "da451298750d9fe6b3509ddde65c11a99212e60a" {
		t.Errorf("template digest = %s", got)
	}
	if len(e.TemplateData) != 51 {
		t.Errorf("template data is %d bytes, want 51", len(e.TemplateData))
	}
	if _, err := e.VerifyTemplateHash(); err != nil {
		t.Errorf("verify: %v", err)
	}

	tmpl, err := e.ParseTemplate()
	if err != nil {
		t.Fatal(err)
	}
	d := tmpl.Field("d-ng").Digest
	if d.Algo != "sha256" || d.Alg != pcr.SHA256 || hex.EncodeToString(d.Digest) != "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" {
		t.Errorf("d-ng = %+v", d)
	}
	if name := string(tmpl.Field("n-ng").Name); name != "/a" {
		t.Errorf("n-ng = %q, want /a (NUL stripped)", name)
	}

	want := "10 da451298750d9fe6b3509ddde65c11a99212e60a ima-ng sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 /a\n"
	if got := string(AppendASCII(nil, e)); got != want {
		t.Errorf("ascii = %q\nwant    %q", got, want)
	}
}

func TestReaderBigEndian(t *testing.T) {
	entries, r, err := readBinary(t, mustHex(t, b2Hex), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if r.ByteOrder() != BigEndian {
		t.Fatalf("byte order = %v, want big-endian", r.ByteOrder())
	}
	e := entries[0]
	if e.PCR != 10 || e.TemplateName != "ima-ng" {
		t.Errorf("pcr %d name %q", e.PCR, e.TemplateName)
	}
	// The kernel hashed the big-endian field lengths: the hash must be taken
	// over the bytes as written.
	if _, err := e.VerifyTemplateHash(); err != nil {
		t.Errorf("verify: %v", err)
	}
	hash, _ := e.TemplateHash(pcr.SHA1)
	if got := hex.EncodeToString(hash); got != "3d5c9d477c0b02fad443da2ad641309247b48bdf" {
		t.Errorf("template hash = %s, want 3d5c9d47... (a parser that re-encodes gets da451298...)", got)
	}
	tmpl, err := e.ParseTemplate()
	if err != nil {
		t.Fatal(err)
	}
	if name := string(tmpl.Field("n-ng").Name); name != "/a" {
		t.Errorf("n-ng = %q", name)
	}
}

func TestReaderForcedByteOrder(t *testing.T) {
	// A big-endian host with ima_canonical_fmt writes the bytes of b1Hex.
	entries, r, err := readBinary(t, mustHex(t, b1Hex), Options{ByteOrder: LittleEndian})
	if err != nil || len(entries) != 1 || r.ByteOrder() != LittleEndian {
		t.Fatalf("forced little-endian: %d entries, %v, %v", len(entries), r.ByteOrder(), err)
	}

	// Forcing the wrong order must fail at entry 0, not misread.
	_, _, err = readBinary(t, mustHex(t, b1Hex), Options{ByteOrder: BigEndian})
	var entryErr *EntryError
	if !errors.As(err, &entryErr) || !errors.Is(err, ErrMalformed) || entryErr.Index != 0 {
		t.Errorf("forced big-endian on a little-endian list: err = %v", err)
	}
}

func TestReaderLegacyTemplate(t *testing.T) {
	entries, _, err := readBinary(t, mustHex(t, b5Hex), Options{})
	if err != nil {
		t.Fatal(err)
	}
	e := entries[0]
	if !e.IsLegacy() {
		t.Fatal("not legacy")
	}
	if len(e.TemplateData) != 22 || string(e.TemplateData[20:]) != "/a" {
		t.Errorf("template data = %x, want digest || /a", e.TemplateData)
	}
	hash, err := e.TemplateHash(pcr.SHA1)
	if err != nil {
		t.Fatal(err)
	}
	got := hex.EncodeToString(hash)
	if got != "c0b1d18afd11b1d28af4566dd410cded48175ecb" {
		t.Errorf("legacy template hash = %s", got)
	}
	for _, wrong := range []string{"300774703ea98257a767d21394451eea56047f75", "520b01654712afe31c39b533bb9a2148502c5158"} {
		if got == wrong {
			t.Errorf("legacy template hash uses a wrong rule: %s", got)
		}
	}
	if _, err := e.VerifyTemplateHash(); err != nil {
		t.Errorf("verify: %v", err)
	}
	want := "10 c0b1d18afd11b1d28af4566dd410cded48175ecb ima da39a3ee5e6b4b0d3255bfef95601890afd80709 /a\n"
	if got := string(AppendASCII(nil, e)); got != want {
		t.Errorf("ascii = %q, want %q", got, want)
	}
}

func TestReaderLegacyNameTooLong(t *testing.T) {
	data := mustHex(t, "0a000000 c0b1d18afd11b1d28af4566dd410cded48175ecb 03000000 696d61 da39a3ee5e6b4b0d3255bfef95601890afd80709 00010000")
	data = append(data, bytes.Repeat([]byte{'a'}, 256)...)
	_, _, err := readBinary(t, data, Options{})
	if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "256") {
		t.Errorf("name of 256 bytes: err = %v, want malformed naming the length", err)
	}
}

func TestReaderViolation(t *testing.T) {
	entries, _, err := readBinary(t, mustHex(t, violationHex), Options{})
	if err != nil {
		t.Fatal(err)
	}
	e := entries[0]
	if !e.IsViolation() {
		t.Fatal("all-zero digest is not a violation")
	}
	// The template data hash is not zero and must not be checked.
	if _, err := e.VerifyTemplateHash(); err != nil {
		t.Errorf("violation checked: %v", err)
	}
	hash, _ := e.TemplateHash(pcr.SHA1)
	if got := hex.EncodeToString(hash); got != "d26b1755cf1abef6572a64bd33578bf3f6e017e8" {
		t.Errorf("template data hash = %s", got)
	}
}

func TestReaderTrailingTemplateBytes(t *testing.T) {
	data := mustHex(t, b1Hex)
	data[4+20+4+6] = 0x34
	data = append(data, 0x00)
	data = append(data, mustHex(t, b1Hex)...)
	entries, r, err := readBinary(t, data, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 || entries[1].Offset != 90 || r.Offset() != 179 {
		t.Fatalf("framing: %d entries, second at %d, offset %d", len(entries), entries[1].Offset, r.Offset())
	}
	_, err = entries[0].ParseTemplate()
	if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "1 trailing bytes") {
		t.Errorf("parse: %v, want 1 trailing byte", err)
	}
	if _, err := entries[0].VerifyTemplateHash(); !errors.Is(err, ErrTemplateHash) {
		t.Errorf("verify over 52 bytes: %v, want mismatch", err)
	}
	if _, err := entries[1].VerifyTemplateHash(); err != nil {
		t.Errorf("second entry: %v", err)
	}
}

func TestReaderOddName(t *testing.T) {
	data := mustHex(t, "0a000000 a00d3c5ad13ebb2ff76dcc5fd5a4d079ae5376fd 06000000 696d612d6e67 3a000000"+
		"28000000 7368613235363a00 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"+
		"0a000000 2f6120620aff2e736f00")
	entries, _, err := readBinary(t, data, Options{})
	if err != nil {
		t.Fatal(err)
	}
	e := entries[0]
	if _, err := e.VerifyTemplateHash(); err != nil {
		t.Errorf("verify: %v", err)
	}
	tmpl, err := e.ParseTemplate()
	if err != nil {
		t.Fatal(err)
	}
	if name := tmpl.Field("n-ng").Name; !bytes.Equal(name, []byte("/a b\n\xff.so")) {
		t.Errorf("name = %q", name)
	}
}

func TestReaderEmptyAndGarbage(t *testing.T) {
	entries, _, err := readBinary(t, readFile(t, "rustkeylime__empty_ima_log.txt"), Options{})
	if err != nil || len(entries) != 0 {
		t.Errorf("empty: %d entries, %v", len(entries), err)
	}

	_, _, err = readBinary(t, readFile(t, "rustkeylime__invalid_ima_log.txt"), Options{})
	var entryErr *EntryError
	if !errors.As(err, &entryErr) || entryErr.Offset != 0 || !errors.Is(err, ErrMalformed) {
		t.Errorf("garbage: %v", err)
	}
}

func TestReaderAbsurdLengths(t *testing.T) {
	cases := []struct {
		name string
		data []byte
		want error
	}{
		{"name length 3 GB", mustHex(t, "0a000000 da451298750d9fe6b3509ddde65c11a99212e60a 000000c0 696d612d6e67"), ErrMalformed},
		{"data length 4 GB", mustHex(t, "0a000000 da451298750d9fe6b3509ddde65c11a99212e60a 06000000 696d612d6e67 ffffffff 00"), ErrMalformed},
		{"data length 1 MiB in 100 bytes", append(mustHex(t, "0a000000 da451298750d9fe6b3509ddde65c11a99212e60a 06000000 696d612d6e67 00001000"), make([]byte, 62)...), ErrTruncated},
		{"header cut", mustHex(t, "0a000000 da4512"), ErrTruncated},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := NewReader(bytes.NewReader(tc.data), Options{})
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err := r.Next()
			runtime.ReadMemStats(&after)
			if !errors.Is(err, tc.want) {
				t.Errorf("err = %v, want %v", err, tc.want)
			}
			// The reader's own buffer is allocated in NewReader; a length
			// field must not size any allocation.
			if grown := after.TotalAlloc - before.TotalAlloc; grown > 64<<10 {
				t.Errorf("allocated %d bytes for a %d-byte input", grown, len(tc.data))
			}
		})
	}
}

func TestReaderZeroLengthTemplateData(t *testing.T) {
	// The kernel never writes empty template data; accept it and hash the
	// empty string.
	data := mustHex(t, "0a000000 da39a3ee5e6b4b0d3255bfef95601890afd80709 03000000 736967 00000000")
	entries, _, err := readBinary(t, data, Options{})
	if err != nil || len(entries) != 1 {
		t.Fatalf("%d entries, %v", len(entries), err)
	}
	if _, err := entries[0].VerifyTemplateHash(); err != nil {
		t.Errorf("verify: %v", err)
	}
}

func TestReaderPaddedSHA1Digest(t *testing.T) {
	// A binary_runtime_measurements_sha256 entry whose digest is the SHA-1
	// template hash zero-padded, as for a bank the kernel cannot hash.
	data := mustHex(t, "0a000000 da451298750d9fe6b3509ddde65c11a99212e60a 000000000000000000000000 06000000 696d612d6e67 33000000"+
		"28000000 7368613235363a00 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 03000000 2f6100")
	entries, _, err := readBinary(t, data, Options{DigestAlg: pcr.SHA256})
	if err != nil {
		t.Fatal(err)
	}
	padded, err := entries[0].VerifyTemplateHash()
	if err != nil || !padded {
		t.Errorf("padded = %v, err = %v; want padded", padded, err)
	}
}

func TestReaderUnknownBank(t *testing.T) {
	// A _tpm_alg_<hex> list whose digest field is the single byte '0'.
	data := mustHex(t, "0a000000 30 06000000 696d612d6e67 33000000"+
		"28000000 7368613235363a00 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 03000000 2f6100")
	info, ok := InfoFromFileName("/sys/kernel/security/ima/binary_runtime_measurements_tpm_alg_27")
	if !ok || info.Options.DigestAlg != pcr.Alg(0x27) {
		t.Fatalf("info = %+v, %v", info, ok)
	}

	_, _, err := readBinary(t, data, info.Options)
	if !errors.Is(err, ErrInvalidOptions) {
		t.Errorf("unknown digest size: err = %v, want ErrInvalidOptions", err)
	}

	info.Options.DigestSize = 1
	entries, _, err := readBinary(t, data, info.Options)
	if err != nil || len(entries) != 1 {
		t.Fatalf("digest size 1: %d entries, %v", len(entries), err)
	}
	if _, err := entries[0].VerifyTemplateHash(); !errors.Is(err, pcr.ErrUnsupportedAlg) {
		t.Errorf("verify: %v, want unsupported", err)
	}
}

func TestInfoFromFileName(t *testing.T) {
	cases := []struct {
		name  string
		ascii bool
		alg   pcr.Alg
	}{
		{"binary_runtime_measurements", false, pcr.SHA1},
		{"/sys/kernel/security/ima/binary_runtime_measurements_sha256", false, pcr.SHA256},
		{"binary_runtime_measurements_sha512_staged", false, pcr.SHA512},
		{"ascii_runtime_measurements_sha384", true, pcr.SHA384},
		{"ascii_runtime_measurements_sm3", true, pcr.SM3_256},
		{"ascii_runtime_measurements", true, pcr.SHA1},
	}
	for _, tc := range cases {
		info, ok := InfoFromFileName(tc.name)
		if !ok || info.ASCII != tc.ascii || info.Options.DigestAlg != tc.alg {
			t.Errorf("%s: %+v %v", tc.name, info, ok)
		}
	}
	if _, ok := InfoFromFileName("policy"); ok {
		t.Error("policy is not a list")
	}
}

// Corpus lists: entry counts, where a truncated tail starts and how many
// bytes it has.
var binaryCorpus = []struct {
	file      string
	alg       pcr.Alg
	entries   int
	tailAt    int64 // offset of the partial entry, or -1
	tailBytes int
}{
	{"tpm2tss__sml-ima-sha1.bin", pcr.SHA1, 12, 916, 1},
	{"tpm2tss__sml-ima-sha1-invalidated.bin", pcr.SHA1, 1, -1, 0},
	{"tpm2tss__sml-ima-ng-sha1.bin", pcr.SHA1, 6, 558, 1},
	{"tpm2tss__sml-ima-ng-sha1-invalidated.bin", pcr.SHA1, 0, 0, 86},
	{"tpm2tss__sml-ima-sig-sha256.bin", pcr.SHA1, 9, 987, 6},
	{"tpm2tss__sml-ima-sig-sha256-invalidated.bin", pcr.SHA1, 2, -1, 0},
	{"ibmtss__utils_imatest.log.bin", pcr.SHA1, 17, -1, 0},
	{"ibmtss__utils_sha1.log.bin", pcr.SHA1, 362, -1, 0},
	{"ibmtss__utils_sha256.log.bin", pcr.SHA256, 362, -1, 0},
	{"ibmtss__utils_sha384.log.bin", pcr.SHA384, 362, -1, 0},
	{"ibmtss__utils_sha512.log.bin", pcr.SHA512, 362, -1, 0},
}

func TestReaderCorpus(t *testing.T) {
	for _, tc := range binaryCorpus {
		t.Run(tc.file, func(t *testing.T) {
			data := readFile(t, tc.file)

			// Strict: a partial tail is an error naming its offset.
			entries, _, err := readBinary(t, data, Options{DigestAlg: tc.alg})
			if tc.tailAt < 0 && err != nil {
				t.Fatalf("strict: %v", err)
			}
			if tc.tailAt >= 0 {
				var entryErr *EntryError
				if !errors.As(err, &entryErr) || !errors.Is(err, ErrTruncated) || entryErr.Offset != tc.tailAt || entryErr.Index != int64(tc.entries) {
					t.Errorf("strict: err = %v, want truncated at offset %d entry %d", err, tc.tailAt, tc.entries)
				}
			}
			if len(entries) != tc.entries {
				t.Errorf("strict: %d entries, want %d", len(entries), tc.entries)
			}

			// Lenient: the complete entries, then io.EOF and the pending bytes.
			entries, r, err := readBinary(t, data, Options{DigestAlg: tc.alg, AllowTruncated: true})
			if err != nil || len(entries) != tc.entries || r.Pending() != tc.tailBytes {
				t.Errorf("lenient: %d entries, pending %d, err %v", len(entries), r.Pending(), err)
			}
			if r.Offset()+int64(r.Pending()) != int64(len(data)) {
				t.Errorf("offset %d + pending %d != size %d", r.Offset(), r.Pending(), len(data))
			}

			for _, e := range entries {
				if _, err := e.VerifyTemplateHash(); err != nil {
					t.Errorf("entry %d: %v", e.Index, err)
				}
			}
		})
	}
}

func TestWriterRoundTripCorpus(t *testing.T) {
	for _, tc := range binaryCorpus {
		t.Run(tc.file, func(t *testing.T) {
			data := readFile(t, tc.file)
			entries, r, err := readBinary(t, data, Options{DigestAlg: tc.alg, AllowTruncated: true})
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			w := NewWriter(&out, ByteOrderAuto)
			for _, e := range entries {
				if err := w.Write(e); err != nil {
					t.Fatal(err)
				}
			}
			if !bytes.Equal(out.Bytes(), data[:r.Offset()]) {
				t.Errorf("written list differs from the %d complete bytes read", r.Offset())
			}
			for _, e := range entries {
				b, err := AppendBinary(nil, e, LittleEndian)
				if err != nil || !bytes.Equal(b, e.Raw) {
					t.Errorf("entry %d: encoding differs from Raw (%v)", e.Index, err)
				}
			}
		})
	}
}

func TestWriterBigEndianRoundTrip(t *testing.T) {
	data := mustHex(t, b2Hex)
	entries, _, err := readBinary(t, data, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := NewWriter(&out, ByteOrderAuto).Write(entries[0]); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), data) {
		t.Errorf("big-endian entry written as %x", out.Bytes())
	}
}

func TestReaderEveryCut(t *testing.T) {
	// A live list can be read at any moment: every prefix must give exactly
	// the complete entries and leave the rest pending.
	data := readFile(t, "ibmtss__utils_imatest.log.bin")
	full, _, err := readBinary(t, data, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ends := map[int]int{0: 0}
	var end int
	for i, e := range full {
		end = int(e.Offset) + len(e.Raw)
		ends[end] = i + 1
	}
	complete := 0
	for cut := 0; cut <= len(data); cut++ {
		if n, ok := ends[cut]; ok {
			complete = n
		}
		entries, r, err := readBinary(t, data[:cut], Options{ByteOrder: LittleEndian, AllowTruncated: true})
		if err != nil || len(entries) != complete || int(r.Offset())+r.Pending() != cut {
			t.Fatalf("cut at %d: %d entries (want %d), pending %d, err %v", cut, len(entries), complete, r.Pending(), err)
		}
		_, _, strictErr := readBinary(t, data[:cut], Options{ByteOrder: LittleEndian})
		if _, atEnd := ends[cut]; !atEnd && !errors.Is(strictErr, ErrTruncated) {
			t.Fatalf("cut at %d: strict err = %v, want truncated", cut, strictErr)
		}
	}
}

func TestReaderEntriesNotReused(t *testing.T) {
	data := readFile(t, "ibmtss__utils_sha1.log.bin")
	r := NewReader(bytes.NewReader(data), Options{})
	first, err := r.Next()
	if err != nil {
		t.Fatal(err)
	}
	saved := bytes.Clone(first.Raw)
	for {
		if _, err := r.Next(); err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
			break
		}
	}
	if !bytes.Equal(saved, first.Raw) {
		t.Error("the reader overwrote an entry it returned")
	}
}

// TestReaderNextIntoCorpus reads every binary corpus file with one reused
// entry and buffer, and checks each entry against Next and its clone
// against later reuse.
func TestReaderNextIntoCorpus(t *testing.T) {
	for _, tc := range binaryCorpus {
		t.Run(tc.file, func(t *testing.T) {
			data := readFile(t, tc.file)
			opts := Options{DigestAlg: tc.alg, AllowTruncated: true}
			want, _, err := readBinary(t, data, opts)
			if err != nil {
				t.Fatal(err)
			}

			r := NewReader(bytes.NewReader(data), opts)
			var e Entry
			var buf []byte
			var kept []*Entry
			for i := 0; ; i++ {
				buf, err = r.NextInto(&e, buf[:0])
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatalf("entry %d: %v", i, err)
				}
				if i >= len(want) {
					t.Fatalf("NextInto read more than the %d entries of Next", len(want))
				}
				w := want[i]
				if e.Index != w.Index || e.Offset != w.Offset || e.PCR != w.PCR || e.TemplateName != w.TemplateName ||
					!bytes.Equal(e.Raw, w.Raw) || !bytes.Equal(e.TemplateData, w.TemplateData) || !bytes.Equal(e.TemplateDigest, w.TemplateDigest) {
					t.Fatalf("entry %d differs from Next", i)
				}
				kept = append(kept, e.Clone())
			}
			if len(kept) != len(want) || r.Pending() != tc.tailBytes {
				t.Fatalf("%d entries, pending %d; want %d, %d", len(kept), r.Pending(), len(want), tc.tailBytes)
			}
			for i, c := range kept {
				if !bytes.Equal(c.Raw, want[i].Raw) || !bytes.Equal(c.TemplateData, want[i].TemplateData) {
					t.Errorf("clone of entry %d changed when the buffer was reused", i)
				}
			}
		})
	}
}

// TestReaderLargeEntryNotRetained checks that the entry slab does not keep a
// large entry's bytes alive after the caller drops it: a list of many
// ima-buf entries of megabytes each must not pin every one of them.
func TestReaderLargeEntryNotRetained(t *testing.T) {
	const dataLen = 1 << 20
	var data []byte
	for range 3 {
		data = binary.LittleEndian.AppendUint32(data, 10)
		data = append(data, bytes.Repeat([]byte{1}, 20)...)
		data = binary.LittleEndian.AppendUint32(data, 7)
		data = append(data, "ima-buf"...)
		data = binary.LittleEndian.AppendUint32(data, dataLen)
		data = append(data, make([]byte, dataLen)...)
	}
	r := NewReader(bytes.NewReader(data), Options{})

	first, err := r.Next()
	if err != nil {
		t.Fatal(err)
	}
	firstBytes := weak.Make(&first.Raw[0])
	first = nil
	for range 2 {
		if _, err := r.Next(); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	runtime.GC()
	if firstBytes.Value() != nil {
		t.Error("the reader still holds the bytes of the first large entry after the caller dropped it")
	}
	runtime.KeepAlive(r)
}

// TestReaderLargeEntryExactSize checks that an entry larger than the
// reader's buffer keeps an array of its own size, not one grown to up to
// twice that while its bytes arrived.
func TestReaderLargeEntryExactSize(t *testing.T) {
	for _, dataLen := range []int{readerBufferSize, 1<<20 + 3, 5 << 20} {
		data := binary.LittleEndian.AppendUint32(nil, 10)
		data = append(data, bytes.Repeat([]byte{1}, 20)...)
		data = binary.LittleEndian.AppendUint32(data, 7)
		data = append(data, "ima-buf"...)
		data = binary.LittleEndian.AppendUint32(data, uint32(dataLen))
		data = append(data, make([]byte, dataLen)...)

		entries, _, err := readBinary(t, data, Options{})
		if err != nil || len(entries) != 1 {
			t.Fatalf("%d bytes of template data: %d entries, %v", dataLen, len(entries), err)
		}
		raw := entries[0].Raw
		if !bytes.Equal(raw, data) {
			t.Errorf("%d bytes of template data: Raw differs from the input", dataLen)
		}
		if cap(raw) != len(data) {
			t.Errorf("%d bytes of template data: Raw has capacity %d for %d bytes", dataLen, cap(raw), len(data))
		}
	}
}
