package imalog

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imashard/imashard/pkg/pcr"
)

func readASCII(t testing.TB, data []byte, opts Options) ([]*Entry, *ASCIIReader, error) {
	t.Helper()
	r := NewASCIIReader(bytes.NewReader(data), opts)
	entries, err := readAll(r)
	return entries, r, err
}

// ASCII corpus lists with their bank, entry count and whether every line is
// exactly what the kernel prints.
var asciiCorpus = []struct {
	file    string
	alg     pcr.Alg
	entries int
	kernel  bool // lines reproduce bit for bit
}{
	{"ccapi__evidence-api_test_data_ima_log.bin.txt", pcr.SHA384, 1, true},
	{"hpeperf__data_ima_log.txt", pcr.SHA1, 780, true},
	{"keylime__create-runtime-policy_ima-log-sha1.txt", pcr.SHA1, 2, true},
	{"keylime__create-runtime-policy_ima-log-sha256.txt", pcr.SHA1, 2, true},
	{"keylime__create-runtime-policy_ima-log-sha384.txt", pcr.SHA1, 2, true},
	{"keylime__create-runtime-policy_ima-log-sha512.txt", pcr.SHA1, 2, true},
	{"keylime__test_ima_ast__VALID_ENTRIES_ima-buf.txt", pcr.SHA1, 1, true},
	{"keylime__test_ima_ast__VALID_ENTRIES_ima-ng.txt", pcr.SHA1, 1, true},
	{"keylime__test_ima_ast__VALID_ENTRIES_ima-sig-ec.txt", pcr.SHA1, 1, true},
	{"keylime__test_ima_ast__VALID_ENTRIES_ima-sig-missing.txt", pcr.SHA1, 1, true},
	{"keylime__test_ima_ast__VALID_ENTRIES_ima-sig-rsa.txt", pcr.SHA1, 1, true},
	{"keylime__test_ima_ast__VALID_ENTRIES_ima.txt", pcr.SHA1, 1, true},
	{"keylime__test_ima_verification__KEYRINGS.txt", pcr.SHA1, 1, true},
	{"keylime__test_ima_verification__MEASUREMENTS.txt", pcr.SHA1, 3, true},
	{"keylime__test_ima_verification__SIGNATURES.txt", pcr.SHA1, 2, true},
	{"keylimetests__create_policy_test2_ascii_runtime_measurements-1.txt", pcr.SHA1, 4, false},
	{"keylimetests__create_policy_test2_ascii_runtime_measurements-2.txt", pcr.SHA1, 11, true},
	{"keylimetests__policy-commands_ima_log.txt", pcr.SHA1, 5, true},
	{"rustkeylime__agent_test-data_ima_ascii_runtime_measurements.txt", pcr.SHA1, 826, true},
	{"rustkeylime__ima_log.txt", pcr.SHA1, 1, true},
	{"rustkeylime__empty_ima_log.txt", pcr.SHA1, 0, true},
}

func TestASCIIReaderCorpus(t *testing.T) {
	dmFiles, _ := filepath.Glob("testdata/keylime__test_ima_dm__*.txt")
	cases := asciiCorpus
	for _, f := range dmFiles {
		cases = append(cases, struct {
			file    string
			alg     pcr.Alg
			entries int
			kernel  bool
		}{filepath.Base(f), pcr.SHA1, 1, true})
	}
	if len(dmFiles) != 15 {
		t.Errorf("found %d device-mapper lists, want 15", len(dmFiles))
	}

	for _, tc := range cases {
		t.Run(tc.file, func(t *testing.T) {
			data := readFile(t, tc.file)
			entries, _, err := readASCII(t, data, Options{DigestAlg: tc.alg})
			if err != nil {
				t.Fatal(err)
			}
			if len(entries) != tc.entries {
				t.Fatalf("%d entries, want %d", len(entries), tc.entries)
			}
			var rendered []byte
			for _, e := range entries {
				if _, err := e.VerifyTemplateHash(); err != nil {
					t.Errorf("entry %d: %v", e.Index, err)
				}
				rendered = AppendASCII(rendered, e)
			}
			if !tc.kernel {
				return
			}
			// Some lists were stored without the final newline.
			if len(data) > 0 && data[len(data)-1] != '\n' {
				data = append(data, '\n')
			}
			if !bytes.Equal(rendered, data) {
				t.Errorf("rendered list differs from the file:\n%.300s\nwant\n%.300s", rendered, data)
			}
		})
	}
}

func TestASCIISingleDigitPCR(t *testing.T) {
	entries, _, err := readASCII(t, readFile(t, "ccapi__evidence-api_test_data_ima_log.bin.txt"), Options{DigestAlg: pcr.SHA384})
	if err != nil {
		t.Fatal(err)
	}
	e := entries[0]
	if e.PCR != 2 || len(e.TemplateDigest) != 48 {
		t.Errorf("pcr %d, digest %d bytes", e.PCR, len(e.TemplateDigest))
	}
	hash, _ := e.TemplateHash(pcr.SHA384)
	if !bytes.Equal(hash, e.TemplateDigest) {
		t.Errorf("sha384 template hash %x != %x", hash, e.TemplateDigest)
	}
}

func TestASCIIMissingSignatureColumn(t *testing.T) {
	data := readFile(t, "keylimetests__create_policy_test2_ascii_runtime_measurements-1.txt")
	entries, _, err := readASCII(t, data, Options{})
	if err != nil {
		t.Fatal(err)
	}
	e := entries[0]
	if got := hex.EncodeToString(e.TemplateDigest); got != "02d7a8ac22a4878f51d9421a1debefe97fae3889" {
		t.Fatalf("first entry digest %s", got)
	}
	tmpl, err := e.ParseTemplate()
	if err != nil {
		t.Fatal(err)
	}
	if name := string(tmpl.Field("n-ng").Name); name != "boot_aggregate" {
		t.Errorf("name = %q; the name must not be taken as the signature", name)
	}
	if len(tmpl.Field("sig").Data) != 0 {
		t.Error("signature should be empty")
	}
	if _, err := e.VerifyTemplateHash(); err != nil {
		t.Errorf("verify: %v", err)
	}
}

// oddNameHex is an ima-ng entry whose name has a space, a newline and an
// invalid UTF-8 byte.
const oddNameHex = "0a000000 a00d3c5ad13ebb2ff76dcc5fd5a4d079ae5376fd 06000000 696d612d6e67 3a000000" +
	"28000000 7368613235363a00 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" +
	"0a000000 2f6120620aff2e736f00"

func TestASCIINameWithSpace(t *testing.T) {
	data := mustHex(t, "28000000 7368613235363a00 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 08000000 2f6120622e736f00")
	want := sha1.Sum(data)
	for _, name := range []string{"ima-ng", "ima-sig"} {
		line := "10 " + hex.EncodeToString(want[:]) + " " + name + " sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 /a b.so"
		if name == "ima-sig" {
			sigData := append(bytes.Clone(data), 0, 0, 0, 0)
			sum := sha1.Sum(sigData)
			line = "10 " + hex.EncodeToString(sum[:]) + " ima-sig sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 /a b.so "
		}
		entries, _, err := readASCII(t, []byte(line+"\n"), Options{})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		tmpl, _ := entries[0].ParseTemplate()
		if got := string(tmpl.Field("n-ng").Name); got != "/a b.so" {
			t.Errorf("%s: name = %q", name, got)
		}
		if _, err := entries[0].VerifyTemplateHash(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestASCIINameWithNewline(t *testing.T) {
	binary, _, err := readBinary(t, append(mustHex(t, oddNameHex), mustHex(t, b1Hex)...), Options{})
	if err != nil {
		t.Fatal(err)
	}
	var list []byte
	for _, e := range binary {
		list = AppendASCII(list, e)
	}
	if bytes.Count(list, []byte{'\n'}) != 3 {
		t.Fatalf("the kernel's rendering should break the first entry over two lines: %q", list)
	}

	entries, _, err := readASCII(t, list, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		t.Fatalf("%d entries, want 2 (no entry dropped or merged)", len(entries))
	}
	if !bytes.Equal(entries[0].TemplateData, binary[0].TemplateData) {
		t.Errorf("rebuilt template data %x, want %x", entries[0].TemplateData, binary[0].TemplateData)
	}
	if !bytes.Equal(entries[1].TemplateData, binary[1].TemplateData) || entries[1].Offset != int64(bytes.IndexByte(list, '\n')+1+bytes.IndexByte(list[bytes.IndexByte(list, '\n')+1:], '\n')+1) {
		t.Errorf("second entry: offset %d", entries[1].Offset)
	}

	// A continuation that does not make the hash verify is not joined: the
	// broken line is reported with its number.
	broken := bytes.Replace(list, []byte("\xff.so"), []byte("\xff.sx"), 1)
	_, _, err = readASCII(t, broken, Options{})
	var entryErr *EntryError
	if !errors.As(err, &entryErr) || entryErr.Line != 2 || !errors.Is(err, ErrMalformed) {
		t.Errorf("broken continuation: err = %v, want malformed at line 2", err)
	}
}

func TestASCIINameWithNewlines(t *testing.T) {
	// Names with two and with four newlines span three and five lines.
	for _, name := range []string{"/a\nb\nc", "/a\n\nb c\n\xff\nd"} {
		e := &Entry{PCR: 10, TemplateName: "ima-ng"}
		e.TemplateData = binary.LittleEndian.AppendUint32(nil, 40)
		e.TemplateData = append(e.TemplateData, "sha256:\x00"...)
		e.TemplateData = append(e.TemplateData, make([]byte, 32)...)
		e.TemplateData = binary.LittleEndian.AppendUint32(e.TemplateData, uint32(len(name)+1))
		e.TemplateData = append(append(e.TemplateData, name...), 0)
		sum := sha1.Sum(e.TemplateData)
		e.TemplateDigest = sum[:]

		// The entry between two copies of B1 checks that joining
		// consumes the continuation lines and nothing more.
		b1, _, err := readBinary(t, mustHex(t, b1Hex), Options{})
		if err != nil {
			t.Fatal(err)
		}
		list := AppendASCII(nil, b1[0])
		list = AppendASCII(list, e)
		list = AppendASCII(list, b1[0])

		entries, _, err := readASCII(t, list, Options{})
		if err != nil {
			t.Fatalf("name %q: %v", name, err)
		}
		if len(entries) != 3 {
			t.Fatalf("name %q: %d entries, want 3", name, len(entries))
		}
		if !bytes.Equal(entries[1].TemplateData, e.TemplateData) {
			t.Errorf("name %q: rebuilt template data %x, want %x", name, entries[1].TemplateData, e.TemplateData)
		}
		if !bytes.Equal(entries[2].TemplateData, b1[0].TemplateData) {
			t.Errorf("name %q: the entry after the joined one reads as %x", name, entries[2].TemplateData)
		}
	}
}

func TestASCIIPerBankColumn(t *testing.T) {
	data := readFile(t, "keylime__create-runtime-policy_ima-log-sm3_256.txt")
	_, _, err := readASCII(t, data, Options{})
	if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "64 hex digits") {
		t.Errorf("64-digit column read as sha1: %v", err)
	}

	entries, _, err := readASCII(t, data, Options{DigestAlg: pcr.SM3_256})
	if err != nil || len(entries) != 2 {
		t.Fatalf("sm3 list: %d entries, %v", len(entries), err)
	}
	if !entries[0].IsViolation() {
		t.Error("first entry is a violation")
	}
	if _, err := entries[1].VerifyTemplateHash(); !errors.Is(err, pcr.ErrUnsupportedAlg) {
		t.Errorf("sm3 template hash: %v, want unsupported", err)
	}
}

func TestASCIIInvalidInputs(t *testing.T) {
	cases := []struct {
		file string
		want error
	}{
		{"rustkeylime__invalid_ima_log.txt", ErrMalformed},
		{"keylime__test_ima_ast__INVALID_ENTRIES_invalid-digest.txt", ErrMalformed},
		{"keylime__test_ima_ast__INVALID_ENTRIES_invalid-template-hash.txt", ErrMalformed},
		{"keylime__test_ima_ast__INVALID_ENTRIES_invalid-mode.txt", ErrUnknownTemplate},
	}
	for _, tc := range cases {
		_, _, err := readASCII(t, readFile(t, tc.file), Options{})
		var entryErr *EntryError
		if !errors.Is(err, tc.want) || !errors.As(err, &entryErr) || entryErr.Line != 1 {
			t.Errorf("%s: err = %v, want %v at line 1", tc.file, err, tc.want)
		}
	}

	// The template hash of the corrupted signature line does not verify.
	entries, _, err := readASCII(t, readFile(t, "keylime__test_ima_verification__BAD_SIGNATURES.txt"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := entries[0].VerifyTemplateHash(); !errors.Is(err, ErrTemplateHash) {
		t.Errorf("bad signature line: %v, want mismatch", err)
	}
	tmpl, _ := entries[0].ParseTemplate()
	if f := tmpl.Field("sig"); f.Problem == "" {
		t.Errorf("malformed signature header not reported: %+v", f.Signature)
	}
}

func TestASCIIUnknownDigestAlgorithm(t *testing.T) {
	entries, _, err := readASCII(t, readFile(t, "keylime__create-runtime-policy_ima-log-unknown.txt"), Options{DigestAlg: pcr.SHA256})
	if err != nil || len(entries) != 2 {
		t.Fatalf("%d entries, %v", len(entries), err)
	}
	tmpl, err := entries[1].ParseTemplate()
	if err != nil {
		t.Fatal(err)
	}
	d := tmpl.Field("d-ng")
	if d.Problem == "" || len(d.Digest.Digest) != 29 {
		t.Errorf("unknown digest algorithm not reported: %+v", d)
	}
}

func TestASCIIPartialLastLine(t *testing.T) {
	data := readFile(t, "keylime__test_ima_verification__MEASUREMENTS.txt")
	firstEnd := bytes.IndexByte(data, '\n') + 1
	cut := data[:firstEnd+30]

	entries, r, err := readASCII(t, cut, Options{AllowTruncated: true})
	if err != nil || len(entries) != 1 || r.Pending() != 30 || r.Offset() != int64(firstEnd) {
		t.Errorf("lenient: %d entries, pending %d, offset %d, err %v", len(entries), r.Pending(), r.Offset(), err)
	}
	_, _, err = readASCII(t, cut, Options{})
	if err == nil {
		t.Error("strict: a cut line parsed as an entry")
	}
}

func TestASCIIMatchesBinary(t *testing.T) {
	for _, tc := range binaryCorpus {
		t.Run(tc.file, func(t *testing.T) {
			entries, _, err := readBinary(t, readFile(t, tc.file), Options{DigestAlg: tc.alg, AllowTruncated: true})
			if err != nil {
				t.Fatal(err)
			}
			var list []byte
			for _, e := range entries {
				list = AppendASCII(list, e)
			}
			back, _, err := readASCII(t, list, Options{DigestAlg: tc.alg})
			if err != nil {
				t.Fatal(err)
			}
			if len(back) != len(entries) {
				t.Fatalf("%d entries back, want %d", len(back), len(entries))
			}
			for i := range entries {
				if !bytes.Equal(back[i].TemplateData, entries[i].TemplateData) || back[i].PCR != entries[i].PCR {
					t.Errorf("entry %d: ASCII rebuilt %x, binary %x", i, back[i].TemplateData, entries[i].TemplateData)
				}
			}
		})
	}
}

func TestTestdataProvenance(t *testing.T) {
	sources := string(readFile(t, "SOURCES.tsv"))
	files, _ := os.ReadDir("testdata")
	for _, f := range files {
		if f.Name() != "SOURCES.tsv" && !strings.Contains(sources, "\n"+f.Name()+"\t") && !f.IsDir() {
			t.Errorf("testdata/%s has no line in testdata/SOURCES.tsv", f.Name())
		}
	}
}

func TestSyntheticTemplateVectors(t *testing.T) {
	cases := []struct {
		name, templateName, data, hash, ascii string
	}{
		{
			name:         "ima-sig with empty signature",
			templateName: "ima-sig",
			data:         "280000007368613235363a00e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855030000002f610000000000",
			hash:         "6099666fce324d364596d0529672ef02e1be1b2a",
			// The empty signature leaves a trailing space.
			ascii: "10 6099666fce324d364596d0529672ef02e1be1b2a ima-sig sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 /a \n",
		},
		{
			name:         "ima-buf kexec-cmdline",
			templateName: "ima-buf",
			data:         "280000007368613235363a00ace2599b3a2417133544620474ff9d3ba8354bbf7487afde17de9949a5311c670e0000006b657865632d636d646c696e650011000000726f6f743d2f6465762f7364613120726f",
			hash:         "020bf3ba01cd1d2223fe57e955f21f45203d971c",
			ascii:        "10 020bf3ba01cd1d2223fe57e955f21f45203d971c ima-buf sha256:ace2599b3a2417133544620474ff9d3ba8354bbf7487afde17de9949a5311c67 kexec-cmdline 726f6f743d2f6465762f7364613120726f\n",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := &Entry{PCR: 10, TemplateDigest: mustHex(t, tc.hash), TemplateName: tc.templateName, TemplateData: mustHex(t, tc.data)}
			hash, err := e.TemplateHash(pcr.SHA1)
			if err != nil || hex.EncodeToString(hash) != tc.hash {
				t.Errorf("template hash = %x, %v; want %s", hash, err, tc.hash)
			}
			if got := string(AppendASCII(nil, e)); got != tc.ascii {
				t.Errorf("ascii = %q\nwant    %q", got, tc.ascii)
			}

			entries, _, err := readASCII(t, []byte(tc.ascii), Options{})
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(entries[0].TemplateData, e.TemplateData) {
				t.Errorf("ASCII rebuilt %x", entries[0].TemplateData)
			}
		})
	}

	// The buf field is raw bytes: the digest is the SHA-256 of the buffer.
	e := &Entry{TemplateName: "ima-buf", TemplateData: mustHex(t, cases[1].data)}
	tmpl, err := e.ParseTemplate()
	if err != nil {
		t.Fatal(err)
	}
	buf := tmpl.Field("buf").Data
	sum := sha256.Sum256(buf)
	if string(buf) != "root=/dev/sda1 ro" || !bytes.Equal(sum[:], tmpl.Field("d-ng").Digest.Digest) {
		t.Errorf("buf = %q, digest %x", buf, tmpl.Field("d-ng").Digest.Digest)
	}
}

func TestImaBufDigestIsBufferHash(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.txt")
	checked := 0
	for _, file := range files {
		entries, _, err := readASCII(t, readFile(t, filepath.Base(file)), Options{})
		if err != nil {
			continue // lists of other banks and invalid lists are tested elsewhere
		}
		for _, e := range entries {
			if e.TemplateName != "ima-buf" || e.IsViolation() {
				continue
			}
			tmpl, err := e.ParseTemplate()
			if err != nil {
				t.Fatalf("%s entry %d: %v", file, e.Index, err)
			}
			d := tmpl.Field("d-ng").Digest
			h, err := d.Alg.New()
			if err != nil {
				t.Fatalf("%s entry %d: %v", file, e.Index, err)
			}
			h.Write(tmpl.Field("buf").Data)
			if !bytes.Equal(h.Sum(nil), d.Digest) {
				t.Errorf("%s entry %d: digest is not the %s of the buffer", file, e.Index, d.Algo)
			}
			checked++
		}
	}
	if checked < 20 {
		t.Errorf("checked %d ima-buf entries, expected at least 20 in the corpus", checked)
	}
}

func TestASCIIBigEndianRebuild(t *testing.T) {
	entries, _, err := readBinary(t, mustHex(t, b2Hex), Options{})
	if err != nil {
		t.Fatal(err)
	}
	line := AppendASCII(nil, entries[0])

	// The ASCII line does not show the byte order: rebuilt little-endian,
	// the template data no longer hashes to the digest.
	little, _, err := readASCII(t, line, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := little[0].VerifyTemplateHash(); !errors.Is(err, ErrTemplateHash) {
		t.Errorf("little-endian rebuild of a big-endian entry verified: %v", err)
	}

	big, _, err := readASCII(t, line, Options{ByteOrder: BigEndian})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(big[0].TemplateData, entries[0].TemplateData) {
		t.Errorf("big-endian rebuild %x, want %x", big[0].TemplateData, entries[0].TemplateData)
	}
	if _, err := big[0].VerifyTemplateHash(); err != nil {
		t.Errorf("big-endian rebuild: %v", err)
	}
}
