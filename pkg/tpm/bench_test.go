package tpm

import (
	"testing"

	"github.com/imashard/imashard/pkg/pcr"
	"github.com/imashard/imashard/pkg/swtpm"
)

func BenchmarkVerifyQuoteRSA(b *testing.B) {
	q, key, values := keylimeQuote(b)
	for b.Loop() {
		if _, err := VerifyQuote(key, q, keylimeNonce, values); err != nil {
			b.Fatal(err)
		}
	}
}

func benchSwtpm(b *testing.B) *TPM {
	b.Helper()
	if err := swtpm.Available(); err != nil {
		b.Skipf("skipping: %v", err)
	}
	inst, err := swtpm.Start(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { inst.Stop() })
	tp, err := Open(inst.Spec())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { tp.Close() })
	return tp
}

func BenchmarkReadPCRsAllBanks(b *testing.B) {
	tp := benchSwtpm(b)
	banks, err := tp.Banks()
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := tp.ReadPCRs(banks, allPCRs()); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkQuoteWithValuesECC(b *testing.B) {
	tp := benchSwtpm(b)
	ak, err := tp.LoadAK(AKOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer tp.FlushAK(ak)
	banks := []pcr.Alg{pcr.SHA1, pcr.SHA256}
	for b.Loop() {
		if _, _, err := tp.QuoteWithValues(ak, []byte("nonce"), banks, []int{0, 1, 2, 3, 4, 5, 6, 7, 10}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLoadAK(b *testing.B) {
	tp := benchSwtpm(b)
	for _, alg := range []string{"ecc", "rsa"} {
		b.Run(alg, func(b *testing.B) {
			for b.Loop() {
				ak, err := tp.LoadAK(AKOptions{Alg: alg})
				if err != nil {
					b.Fatal(err)
				}
				if err := tp.FlushAK(ak); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
