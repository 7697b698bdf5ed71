package imalog

import (
	"bytes"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imashard/imashard/pkg/pcr"
)

func addCorpusSeeds(f *testing.F, suffix string) {
	files, err := filepath.Glob(filepath.Join("testdata", "*"+suffix))
	if err != nil || len(files) == 0 {
		f.Fatalf("no seed files *%s in testdata (%v)", suffix, err)
	}
	for _, file := range files {
		f.Add(readFile(f, filepath.Base(file)))
	}
}

// FuzzReader checks that any input either reads or fails cleanly, that every
// entry re-encodes to its own bytes, and that the entries tile the input.
func FuzzReader(f *testing.F) {
	addCorpusSeeds(f, ".bin")
	f.Add(mustHex(f, b2Hex))
	f.Add(mustHex(f, b5Hex))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, alg := range []pcr.Alg{pcr.SHA1, pcr.SHA256} {
			r := NewReader(bytes.NewReader(data), Options{DigestAlg: alg, AllowTruncated: true})
			var written []byte
			for {
				e, err := r.Next()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					var entryErr *EntryError
					if !errors.As(err, &entryErr) {
						t.Fatalf("error without entry position: %v", err)
					}
					break
				}
				b, err := AppendBinary(nil, e, r.ByteOrder())
				if err != nil || !bytes.Equal(b, e.Raw) {
					t.Fatalf("entry %d re-encodes differently (%v)", e.Index, err)
				}
				written = append(written, b...)
				_, _ = e.ParseTemplate()
				_, _ = e.VerifyTemplateHash()
				_ = AppendASCII(nil, e)
			}
			if !bytes.Equal(written, data[:r.Offset()]) {
				t.Fatalf("entries do not tile the first %d bytes", r.Offset())
			}

			// NextInto, with one reused entry and buffer, reads the same.
			into := NewReader(bytes.NewReader(data), Options{DigestAlg: alg, AllowTruncated: true})
			var e Entry
			var buf, again []byte
			for {
				var err error
				if buf, err = into.NextInto(&e, buf[:0]); err != nil {
					break
				}
				again = append(again, e.Raw...)
			}
			if !bytes.Equal(again, written) || into.Offset() != r.Offset() {
				t.Fatalf("NextInto read %d bytes, Next %d", len(again), len(written))
			}
		}
	})
}

// FuzzASCIIReader checks that any text either reads or fails cleanly, and
// that an entry rendered back reads to the same template data.
func FuzzASCIIReader(f *testing.F) {
	addCorpusSeeds(f, ".txt")
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewASCIIReader(bytes.NewReader(data), Options{})
		for {
			e, err := r.Next()
			if err != nil {
				return
			}
			_, _ = e.VerifyTemplateHash()
			line := AppendASCII(nil, e)
			if bytes.Count(line, []byte{'\n'}) != 1 || bytes.Contains(line, []byte{0}) {
				// Names with a newline or NUL do not survive ASCII.
				continue
			}
			back, err := NewASCIIReader(bytes.NewReader(line), Options{}).Next()
			if err != nil {
				if strings.Contains(err.Error(), "template name") {
					continue
				}
				t.Fatalf("rendered line %q does not read back: %v", line, err)
			}
			if !bytes.Equal(back.TemplateData, e.TemplateData) {
				t.Fatalf("line %q reads back as %x, was %x", line, back.TemplateData, e.TemplateData)
			}
		}
	})
}

// FuzzWriterRoundTrip builds entries from fuzzed parts, writes them and
// reads them back in both byte orders.
func FuzzWriterRoundTrip(f *testing.F) {
	f.Add(uint32(10), []byte("ima-ng"), mustHex(f, "280000007368613235363a00e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855030000002f6100"), false)
	f.Add(uint32(11), []byte("ima"), mustHex(f, "da39a3ee5e6b4b0d3255bfef95601890afd807092f61"), true)
	f.Fuzz(func(t *testing.T, pcrIndex uint32, name, data []byte, bigEndian bool) {
		order := LittleEndian
		if bigEndian {
			order = BigEndian
		}
		e := &Entry{PCR: pcrIndex & 0xffff, TemplateDigest: make([]byte, 20), TemplateName: string(name), TemplateData: data}
		e.TemplateDigest[0] = 1
		encoded, err := AppendBinary(nil, e, order)
		if err != nil {
			return
		}
		back, err := NewReader(bytes.NewReader(encoded), Options{ByteOrder: order}).Next()
		if err != nil {
			t.Fatalf("written entry does not read back: %v", err)
		}
		if back.PCR != e.PCR || back.TemplateName != e.TemplateName || !bytes.Equal(back.TemplateData, e.TemplateData) || !bytes.Equal(back.Raw, encoded) {
			t.Fatalf("round trip changed the entry: %+v", back)
		}
	})
}
