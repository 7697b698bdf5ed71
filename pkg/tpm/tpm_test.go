package tpm

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/imashard/imashard/pkg/pcr"
	"github.com/imashard/imashard/pkg/swtpm"
)

// startSwtpm starts a swtpm process on a state directory and opens it. The
// process is stopped by PID when the test ends.
func startSwtpm(t *testing.T, stateDir string) (*swtpm.Instance, *TPM) {
	t.Helper()
	if err := swtpm.Available(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	if stateDir == "" {
		stateDir = t.TempDir()
	}
	inst, err := swtpm.Start(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := inst.Stop(); err != nil {
			t.Errorf("stopping swtpm: %v", err)
		}
	})

	tp, err := Open(inst.Spec())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tp.Close() })
	return inst, tp
}

func allPCRs() []int {
	var indexes []int
	for i := 0; i < 24; i++ {
		indexes = append(indexes, i)
	}
	return indexes
}

// extended returns H(old || digest), the value of a PCR after an extend.
func extended(t *testing.T, alg pcr.Alg, old, digest []byte) []byte {
	t.Helper()
	h, err := alg.New()
	if err != nil {
		t.Fatal(err)
	}
	h.Write(old)
	h.Write(digest)
	return h.Sum(nil)
}

func TestSwtpmBanks(t *testing.T) {
	_, tp := startSwtpm(t, "")

	banks, err := tp.Banks()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(banks, pcr.SHA256) {
		t.Errorf("banks = %v, want sha256 among them", banks)
	}
	for _, b := range banks {
		if !b.Known() {
			t.Errorf("bank %s is not a known hash algorithm", b)
		}
	}
}

func TestSwtpmExtendEveryBank(t *testing.T) {
	_, tp := startSwtpm(t, "")
	banks, err := tp.Banks()
	if err != nil {
		t.Fatal(err)
	}

	// PCR 16 is the debug PCR and starts at zero after TPM2_Startup(CLEAR).
	digests := make(map[pcr.Alg][]byte)
	want := make(pcr.Values)
	for _, bank := range banks {
		d := bytes.Repeat([]byte{0x5a}, bank.Size())
		digests[bank] = d
		want.Set(bank, 16, extended(t, bank, pcr.Zero(bank), d))
	}
	if err := tp.ExtendPCR(16, digests); err != nil {
		t.Fatal(err)
	}

	got, err := tp.ReadPCRs(banks, []int{16})
	if err != nil {
		t.Fatal(err)
	}
	if err := got.Diff(want); err != nil {
		t.Error(err)
	}
}

func TestSwtpmReadManyPCRs(t *testing.T) {
	_, tp := startSwtpm(t, "")
	banks, err := tp.Banks()
	if err != nil {
		t.Fatal(err)
	}

	// After TPM2_Startup(CLEAR), PCRs 17 to 22 (D-RTM PCRs) hold all ones
	// and cannot be extended from locality 0. The others start at zero and
	// get a distinct digest each, so a mix-up of two indexes or banks shows.
	want := make(pcr.Values)
	for _, index := range allPCRs() {
		if index >= 17 && index <= 22 {
			for _, bank := range banks {
				want.Set(bank, index, bytes.Repeat([]byte{0xff}, bank.Size()))
			}
			continue
		}
		digests := make(map[pcr.Alg][]byte)
		for _, bank := range banks {
			start := pcr.Zero(bank)
			d := bytes.Repeat([]byte{byte(index + 1)}, bank.Size())
			digests[bank] = d
			want.Set(bank, index, extended(t, bank, start, d))
		}
		if err := tp.ExtendPCR(index, digests); err != nil {
			t.Fatalf("extending PCR %d: %v", index, err)
		}
	}

	got, err := tp.ReadPCRs(banks, allPCRs())
	if err != nil {
		t.Fatal(err)
	}
	if err := got.Diff(want); err != nil {
		t.Error(err)
	}
	if n := len(got.Indexes(banks[0])); n != 24 {
		t.Errorf("%d PCRs read in %s, want 24", n, banks[0])
	}
}

func TestSwtpmReadRejectsBadSelection(t *testing.T) {
	_, tp := startSwtpm(t, "")
	banks, err := tp.Banks()
	if err != nil {
		t.Fatal(err)
	}

	if _, err := tp.ReadPCRs(banks, []int{24}); !errors.Is(err, ErrInvalidPCR) {
		t.Errorf("PCR 24: err = %v, want ErrInvalidPCR", err)
	}

	for _, alg := range pcr.KnownAlgs() {
		if !slices.Contains(banks, alg) {
			_, err := tp.ReadPCRs([]pcr.Alg{alg}, []int{10})
			if !errors.Is(err, ErrBankNotAllocated) {
				t.Errorf("bank %s: err = %v, want ErrBankNotAllocated", alg, err)
			}
			return
		}
	}
	t.Log("every known bank is allocated, so the unallocated-bank case was not run")
}

func TestSwtpmAKSameAfterRestart(t *testing.T) {
	stateDir := t.TempDir()
	inst, tp := startSwtpm(t, stateDir)

	first := make(map[string]*AK)
	for _, alg := range []string{"ecc", "rsa"} {
		ak, err := tp.LoadAK(AKOptions{Alg: alg})
		if err != nil {
			t.Fatalf("LoadAK(%s): %v", alg, err)
		}
		first[alg] = ak
		if err := tp.FlushAK(ak); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := first["ecc"].PublicKey.(*ecdsa.PublicKey); !ok {
		t.Errorf("ecc AK public key is %T, want *ecdsa.PublicKey", first["ecc"].PublicKey)
	}
	if k, ok := first["rsa"].PublicKey.(*rsa.PublicKey); !ok || k.N.BitLen() != 2048 {
		t.Errorf("rsa AK public key is %T, want a 2048-bit *rsa.PublicKey", first["rsa"].PublicKey)
	}
	if bytes.Equal(first["ecc"].Name, first["rsa"].Name) {
		t.Error("ecc and rsa AKs have the same name")
	}

	tp.Close()
	if err := inst.Stop(); err != nil {
		t.Fatal(err)
	}
	_, tp2 := startSwtpm(t, stateDir)

	for _, alg := range []string{"ecc", "rsa"} {
		ak, err := tp2.LoadAK(AKOptions{Alg: alg})
		if err != nil {
			t.Fatalf("LoadAK(%s) after restart: %v", alg, err)
		}
		if !bytes.Equal(ak.Public, first[alg].Public) {
			t.Errorf("%s AK public area changed across a swtpm restart", alg)
		}
		if !bytes.Equal(ak.Name, first[alg].Name) {
			t.Errorf("%s AK name %x, before the restart %x", alg, ak.Name, first[alg].Name)
		}
		tp2.FlushAK(ak)
	}

	// A new TPM (new endorsement seed) yields a different key.
	_, other := startSwtpm(t, "")
	ak, err := other.LoadAK(AKOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer other.FlushAK(ak)
	if bytes.Equal(ak.Name, first["ecc"].Name) {
		t.Error("two swtpm instances with separate state derived the same AK")
	}
}

// TestSwtpmAKFlushed loads more AKs than swtpm has transient object slots
// (3). Without the flush, swtpm returns TPM_RC_OBJECT_MEMORY.
func TestSwtpmAKFlushed(t *testing.T) {
	_, tp := startSwtpm(t, "")
	for i := 0; i < 8; i++ {
		ak, err := tp.LoadAK(AKOptions{})
		if err != nil {
			t.Fatalf("LoadAK #%d: %v", i, err)
		}
		if err := tp.FlushAK(ak); err != nil {
			t.Fatalf("FlushAK #%d: %v", i, err)
		}
	}
}

func TestSwtpmQuoteVerifies(t *testing.T) {
	_, tp := startSwtpm(t, "")
	banks, err := tp.Banks()
	if err != nil {
		t.Fatal(err)
	}
	if err := tp.ExtendPCR(10, map[pcr.Alg][]byte{pcr.SHA256: bytes.Repeat([]byte{1}, 32)}); err != nil {
		t.Fatal(err)
	}

	for _, alg := range []string{"ecc", "rsa"} {
		t.Run(alg, func(t *testing.T) {
			ak, err := tp.LoadAK(AKOptions{Alg: alg})
			if err != nil {
				t.Fatal(err)
			}
			defer tp.FlushAK(ak)

			nonce := []byte("imashard quote nonce 0123456789")
			q, values, err := tp.QuoteWithValues(ak, nonce, banks, allPCRs())
			if err != nil {
				t.Fatal(err)
			}
			info, err := VerifyQuote(ak.PublicKey, q, nonce, values)
			if err != nil {
				t.Fatalf("VerifyQuote: %v", err)
			}
			if !slices.Equal(info.Banks, banks) {
				t.Errorf("quote banks = %v, want %v", info.Banks, banks)
			}
			for _, bank := range banks {
				if !slices.Equal(info.Selection[bank], allPCRs()) {
					t.Errorf("quote selects %v in %s, want PCRs 0 to 23", info.Selection[bank], bank)
				}
			}
			if !bytes.Equal(info.QualifiedSigner[:2], ak.Name[:2]) {
				t.Errorf("qualifiedSigner %x does not use the AK's nameAlg %x", info.QualifiedSigner, ak.Name[:2])
			}

			checkQuoteFailures(t, ak, q, nonce, values)
		})
	}
}

// checkQuoteFailures alters one input at a time and expects each failure
// to report its own error.
func checkQuoteFailures(t *testing.T, ak *AK, q *Quote, nonce []byte, values pcr.Values) {
	t.Helper()

	badAttest := &Quote{Attest: bytes.Clone(q.Attest), Signature: q.Signature}
	badAttest.Attest[len(badAttest.Attest)/2] ^= 0x40
	if _, err := VerifyQuote(ak.PublicKey, badAttest, nonce, values); !errors.Is(err, ErrBadSignature) {
		t.Errorf("flipped attest byte: err = %v, want ErrBadSignature", err)
	}

	badSig := &Quote{Attest: q.Attest, Signature: bytes.Clone(q.Signature)}
	badSig.Signature[len(badSig.Signature)-5] ^= 0x01
	if _, err := VerifyQuote(ak.PublicKey, badSig, nonce, values); !errors.Is(err, ErrBadSignature) {
		t.Errorf("flipped signature byte: err = %v, want ErrBadSignature", err)
	}

	if _, err := VerifyQuote(ak.PublicKey, q, []byte("another nonce"), values); !errors.Is(err, ErrNonceMismatch) {
		t.Errorf("wrong nonce: err = %v, want ErrNonceMismatch", err)
	}

	wrong := values.Clone()
	v, _ := wrong.Get(pcr.SHA256, 10)
	v[0] ^= 1
	if _, err := VerifyQuote(ak.PublicKey, q, nonce, wrong); !errors.Is(err, ErrPCRDigestMismatch) {
		t.Errorf("wrong PCR 10 value: err = %v, want ErrPCRDigestMismatch", err)
	}

	var otherKey any
	switch ak.PublicKey.(type) {
	case *ecdsa.PublicKey:
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		otherKey = &k.PublicKey
	case *rsa.PublicKey:
		k, _ := rsa.GenerateKey(rand.Reader, 2048)
		otherKey = &k.PublicKey
	}
	if _, err := VerifyQuote(otherKey, q, nonce, values); !errors.Is(err, ErrBadSignature) {
		t.Errorf("different AK: err = %v, want ErrBadSignature", err)
	}
}

func TestSwtpmNonceLimit(t *testing.T) {
	_, tp := startSwtpm(t, "")
	ak, err := tp.LoadAK(AKOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer tp.FlushAK(ak)

	limit, err := tp.MaxNonceSize()
	if err != nil {
		t.Fatal(err)
	}
	// swtpm implements SHA-512, so TPM2B_DATA holds 2 + 64 bytes.
	if limit != 66 {
		t.Errorf("MaxNonceSize = %d, want 66", limit)
	}

	if _, err := tp.Quote(ak, bytes.Repeat([]byte{7}, limit), []pcr.Alg{pcr.SHA256}, []int{10}); err != nil {
		t.Errorf("nonce of %d bytes: %v", limit, err)
	}
	_, err = tp.Quote(ak, bytes.Repeat([]byte{7}, limit+1), []pcr.Alg{pcr.SHA256}, []int{10})
	if !errors.Is(err, ErrNonceTooLarge) || !strings.Contains(err.Error(), "66") {
		t.Errorf("nonce of %d bytes: err = %v, want ErrNonceTooLarge naming 66", limit+1, err)
	}
}

func TestSwtpmPersistentAK(t *testing.T) {
	_, tp := startSwtpm(t, "")

	// Make a persistent AK the way tpm2_createak and tpm2_evictcontrol do.
	template, err := AKTemplate("rsa")
	if err != nil {
		t.Fatal(err)
	}
	created, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
		InPublic:      tpm2.New2B(template),
	}.Execute(tp.tpm)
	if err != nil {
		t.Fatal(err)
	}
	const handle = 0x81010100
	_, err = tpm2.EvictControl{
		Auth:             tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		ObjectHandle:     tpm2.NamedHandle{Handle: created.ObjectHandle, Name: created.Name},
		PersistentHandle: handle,
	}.Execute(tp.tpm)
	if err != nil {
		t.Fatal(err)
	}
	if err := tp.flush(created.ObjectHandle); err != nil {
		t.Fatal(err)
	}

	ak, err := tp.LoadAK(AKOptions{Handle: handle})
	if err != nil {
		t.Fatal(err)
	}
	if err := tp.FlushAK(ak); err != nil {
		t.Fatal(err)
	}
	nonce := []byte{1, 2, 3}
	q, values, err := tp.QuoteWithValues(ak, nonce, []pcr.Alg{pcr.SHA256}, []int{0, 10})
	if err != nil {
		t.Fatalf("quote with the persistent AK after FlushAK: %v", err)
	}
	if _, err := VerifyQuote(ak.PublicKey, q, nonce, values); err != nil {
		t.Error(err)
	}

	if _, err := tp.LoadAK(AKOptions{Handle: 0x81010101}); err == nil {
		t.Error("LoadAK of an empty persistent handle: no error")
	}
	if _, err := tp.LoadAK(AKOptions{Handle: 0x80000001}); err == nil {
		t.Error("LoadAK of a transient handle: no error")
	}
}

func TestOpenMissingDevice(t *testing.T) {
	_, err := Open("/dev/tpm-imashard-test-missing")
	if !errors.Is(err, ErrNoDevice) {
		t.Fatalf("err = %v, want ErrNoDevice", err)
	}
	if !strings.Contains(err.Error(), "/dev/tpm-imashard-test-missing") || !strings.Contains(err.Error(), "driver") {
		t.Errorf("error %q does not name the path and the likely fix", err)
	}

	_, err = Open("unix:" + t.TempDir() + "/no.sock")
	if !errors.Is(err, ErrNoDevice) {
		t.Errorf("missing socket: err = %v, want ErrNoDevice", err)
	}
	if _, err := Open("bogus"); err == nil {
		t.Error("spec bogus: no error")
	}
}

// TestSwtpmCloseFlushesAKs leaves AKs loaded at Close more often than swtpm
// has object slots. Close must flush them, or a later LoadAK fails with
// TPM_RC_OBJECT_MEMORY.
func TestSwtpmCloseFlushesAKs(t *testing.T) {
	inst, tp := startSwtpm(t, "")
	tp.Close()

	for i := 0; i < 5; i++ {
		tp, err := Open(inst.Spec())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tp.LoadAK(AKOptions{}); err != nil {
			t.Fatalf("LoadAK after %d unflushed AKs closed: %v", i, err)
		}
		if err := tp.Close(); err != nil {
			t.Fatalf("Close #%d: %v", i, err)
		}
	}
}

// TestSwtpmEndorsementPassword sets a password on the endorsement hierarchy,
// as an owner may, and expects LoadAK to say so in plain words.
func TestSwtpmEndorsementPassword(t *testing.T) {
	_, tp := startSwtpm(t, "")
	_, err := tpm2.HierarchyChangeAuth{
		AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
		NewAuth:    tpm2.TPM2BAuth{Buffer: []byte("secret")},
	}.Execute(tp.tpm)
	if err != nil {
		t.Fatal(err)
	}

	_, err = tp.LoadAK(AKOptions{})
	if err == nil {
		t.Fatal("LoadAK with an endorsement password set: no error")
	}
	if !strings.Contains(err.Error(), "authorization failed") || !strings.Contains(err.Error(), "endorsement hierarchy") {
		t.Errorf("error %q does not explain the authorization failure", err)
	}
}

const ccPCRRead = 0x0000017E // TPM_CC_PCR_Read

// extendOnceAfterFirstRead makes the TPM extend PCR 0 in every bank right
// after the first TPM2_PCR_Read, as an IMA measurement arriving mid-read
// would.
func extendOnceAfterFirstRead(t *testing.T, tp *TPM, banks []pcr.Alg) *int {
	t.Helper()
	reads := 0
	tp.tpm.afterSend = func(code uint32) {
		if code != ccPCRRead {
			return
		}
		reads++
		if reads != 1 {
			return
		}
		digests := make(map[pcr.Alg][]byte)
		for _, bank := range banks {
			digests[bank] = bytes.Repeat([]byte{0xee}, bank.Size())
		}
		if err := tp.ExtendPCR(0, digests); err != nil {
			t.Errorf("extending PCR 0 mid-read: %v", err)
		}
	}
	t.Cleanup(func() { tp.tpm.afterSend = nil })
	return &reads
}

func TestSwtpmReadRestartsOnChange(t *testing.T) {
	_, tp := startSwtpm(t, "")
	banks, err := tp.Banks()
	if err != nil {
		t.Fatal(err)
	}
	if len(banks) < 2 {
		t.Skipf("needs two banks, swtpm has %v", banks)
	}

	reads := extendOnceAfterFirstRead(t, tp, banks)
	got, err := tp.ReadPCRs(banks, allPCRs())
	if err != nil {
		t.Fatal(err)
	}
	tp.tpm.afterSend = nil

	// The first call read PCR 0 of the first bank before the extend. Every
	// bank must show the extended PCR 0, not a mix of both states.
	want, err := tp.ReadPCRs(banks, allPCRs())
	if err != nil {
		t.Fatal(err)
	}
	if err := got.Diff(want); err != nil {
		t.Errorf("read mixed two PCR states: %v", err)
	}
	if *reads <= (24*len(banks)+7)/8 {
		t.Errorf("%d TPM2_PCR_Read calls: the read did not start over", *reads)
	}
}

func TestSwtpmQuoteRetriesOnChange(t *testing.T) {
	_, tp := startSwtpm(t, "")
	banks, err := tp.Banks()
	if err != nil {
		t.Fatal(err)
	}
	ak, err := tp.LoadAK(AKOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer tp.FlushAK(ak)

	// PCR 0 moves after the first read and before the quote, so the quote
	// covers values the first read did not see.
	extendOnceAfterFirstRead(t, tp, banks)
	nonce := []byte("n")
	q, values, err := tp.QuoteWithValues(ak, nonce, banks, []int{0, 10})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyQuote(ak.PublicKey, q, nonce, values); err != nil {
		t.Errorf("QuoteWithValues returned values its quote does not cover: %v", err)
	}
}

// TestSwtpmQuoteRSAPSS quotes with a persistent RSA AK whose scheme is
// RSAPSS, which tpm2_createak can make, and verifies the PSS signature.
func TestSwtpmQuoteRSAPSS(t *testing.T) {
	_, tp := startSwtpm(t, "")

	template, err := AKTemplate("rsa")
	if err != nil {
		t.Fatal(err)
	}
	params, err := template.Parameters.RSADetail()
	if err != nil {
		t.Fatal(err)
	}
	params.Scheme = tpm2.TPMTRSAScheme{
		Scheme:  tpm2.TPMAlgRSAPSS,
		Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgRSAPSS, &tpm2.TPMSSigSchemeRSAPSS{HashAlg: tpm2.TPMAlgSHA256}),
	}
	template.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, params)
	created, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
		InPublic:      tpm2.New2B(template),
	}.Execute(tp.tpm)
	if err != nil {
		t.Fatal(err)
	}
	const handle = 0x81010200
	_, err = tpm2.EvictControl{
		Auth:             tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		ObjectHandle:     tpm2.NamedHandle{Handle: created.ObjectHandle, Name: created.Name},
		PersistentHandle: handle,
	}.Execute(tp.tpm)
	if err != nil {
		t.Fatal(err)
	}
	if err := tp.flush(created.ObjectHandle); err != nil {
		t.Fatal(err)
	}

	ak, err := tp.LoadAK(AKOptions{Handle: handle})
	if err != nil {
		t.Fatal(err)
	}
	nonce := []byte("pss")
	q, values, err := tp.QuoteWithValues(ak, nonce, []pcr.Alg{pcr.SHA256}, []int{0, 10})
	if err != nil {
		t.Fatal(err)
	}
	sig, err := ParseSignature(q.Signature)
	if err != nil {
		t.Fatal(err)
	}
	if sig.SigAlg != algRSAPSS {
		t.Fatalf("signature algorithm %#04x, want RSAPSS (0x0016)", sig.SigAlg)
	}
	if _, err := VerifyQuote(ak.PublicKey, q, nonce, values); err != nil {
		t.Errorf("VerifyQuote of an RSAPSS quote: %v", err)
	}
	checkQuoteFailures(t, ak, q, nonce, values)
}
