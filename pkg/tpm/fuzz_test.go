package tpm

import (
	"os"
	"testing"
)

func FuzzParseQuote(f *testing.F) {
	attest, _ := os.ReadFile("testdata/keylime-quote.out")
	f.Add(attest)
	f.Add([]byte{0xff, 0x54, 0x43, 0x47, 0x80, 0x18})
	f.Fuzz(func(t *testing.T, data []byte) {
		info, err := ParseQuote(&Quote{Attest: data})
		if err == nil && len(info.Banks) != len(info.Selection) {
			t.Errorf("%d banks but %d selections", len(info.Banks), len(info.Selection))
		}
	})
}

func FuzzParseSignature(f *testing.F) {
	sig, _ := os.ReadFile("testdata/keylime-quotesig.out")
	f.Add(sig)
	f.Add([]byte{0x00, 0x18, 0x00, 0x0b, 0x00, 0x01, 0x01, 0x00, 0x01, 0x02})
	f.Fuzz(func(t *testing.T, data []byte) {
		ParseSignature(data)
	})
}

func FuzzParseAKPublic(f *testing.F) {
	public, _ := os.ReadFile("testdata/keylime-ak.pub")
	f.Add(public)
	f.Fuzz(func(t *testing.T, data []byte) {
		ParseAKPublic(data)
	})
}

func FuzzParseTPM2ToolsPCRs(f *testing.F) {
	file, _ := os.ReadFile("testdata/keylime-quotepcr.out")
	f.Add(file)
	f.Fuzz(func(t *testing.T, data []byte) {
		ParseTPM2ToolsPCRs(data)
	})
}

func FuzzParsePCRsJSON(f *testing.F) {
	f.Add([]byte(`{"sha256": {"10": "00"}}`))
	f.Add([]byte(`{"sha1": {"0": "0000000000000000000000000000000000000000"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ParsePCRsJSON(data)
	})
}
