package pcr

import (
	"bytes"
	"os"
	"testing"
)

// FuzzParsePCRFiles checks that the PCR file parsers fail cleanly and that
// what they accept writes back to the same values.
func FuzzParsePCRFiles(f *testing.F) {
	for _, path := range []string{"testdata/tpm2_pcrread.yaml", "../imalog/testdata/ibmtss__utils_imakvtpcr10.txt"} {
		data, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if v, err := ParseTPM2PCRRead(bytes.NewReader(data)); err == nil {
			var out bytes.Buffer
			if err := WriteTPM2PCRRead(&out, v); err != nil {
				t.Fatal(err)
			}
			back, err := ParseTPM2PCRRead(&out)
			if err != nil || back.Diff(v) != nil {
				t.Fatalf("YAML round trip: %v", err)
			}
		}
		if v, err := ParseEvmctl(bytes.NewReader(data), 0); err == nil {
			for _, alg := range v.Banks() {
				var out bytes.Buffer
				if err := WriteEvmctl(&out, v, alg); err != nil {
					t.Fatal(err)
				}
				back, err := ParseEvmctl(&out, alg)
				if err != nil || back.Diff(Values{alg: v[alg]}) != nil {
					t.Fatalf("evmctl round trip of %s: %v", alg, err)
				}
			}
		}
	})
}
