package tpm

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"slices"

	"github.com/imashard/imashard/pkg/pcr"
)

// Quote verification errors. Each failure has its own value so callers can
// tell a tampered quote from a stale nonce or a log that does not match.
var (
	// ErrBadMagic reports a TPMS_ATTEST whose magic is not
	// TPM_GENERATED_VALUE (0xff544347), so the TPM did not produce it.
	ErrBadMagic = errors.New("attestation magic is not TPM_GENERATED_VALUE")
	// ErrNotQuote reports a TPMS_ATTEST of a type other than TPM_ST_ATTEST_QUOTE.
	ErrNotQuote = errors.New("attestation is not a quote")
	// ErrMalformedQuote reports a TPMS_ATTEST or TPMT_SIGNATURE that cannot
	// be decoded.
	ErrMalformedQuote = errors.New("malformed quote")
	// ErrBadSignature reports a signature that the AK public key does not verify.
	ErrBadSignature = errors.New("quote signature does not verify")
	// ErrNonceMismatch reports extraData that differs from the expected nonce.
	ErrNonceMismatch = errors.New("quote nonce does not match")
	// ErrPCRDigestMismatch reports a pcrDigest that differs from the digest
	// of the supplied PCR values.
	ErrPCRDigestMismatch = errors.New("quote pcrDigest does not match the PCR values")
	// ErrMissingPCRValue reports a PCR the quote selects but the supplied
	// values lack.
	ErrMissingPCRValue = errors.New("PCR value missing for the quote's selection")
)

const (
	tpmGeneratedValue = 0xff544347 // TPM_GENERATED_VALUE
	tpmSTAttestQuote  = 0x8018     // TPM_ST_ATTEST_QUOTE
)

// Quote is a TPM2_Quote result, byte-exact as the TPM returned it.
type Quote struct {
	Attest    []byte // marshaled TPMS_ATTEST (the contents of TPM2B_ATTEST)
	Signature []byte // marshaled TPMT_SIGNATURE
}

// QuoteInfo contains the decoded fields of a quote's TPMS_ATTEST.
type QuoteInfo struct {
	ExtraData []byte // the qualifying data (nonce) given to TPM2_Quote
	// Selection maps each bank to its PCR indexes in ascending order, which
	// is the order the TPM hashes them in.
	Selection map[pcr.Alg][]int
	// Banks lists the banks in the order of the quote's TPML_PCR_SELECTION.
	// pcrDigest covers the banks in this order.
	Banks           []pcr.Alg
	PCRDigest       []byte
	Clock           uint64 // milliseconds the TPM has been powered, from clockInfo
	ResetCount      uint32 // TPM2_Startup(CLEAR) count since TPM2_Clear
	RestartCount    uint32 // TPM2_Startup(STATE) and hibernate resumes since the last reset
	Safe            bool   // clock has not gone backwards since last set
	FirmwareVersion uint64 // vendor-specific firmware version
	QualifiedSigner []byte // TPM2B_NAME contents of the signing key's qualified name
}

// attestReader decodes big-endian TPM structures and remembers the offset
// of the first failure for the error message.
type attestReader struct {
	buf []byte
	off int
	err error
}

func (r *attestReader) take(n int, field string) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || len(r.buf)-r.off < n {
		r.err = fmt.Errorf("%w: %s at byte offset %d needs %d bytes, %d left", ErrMalformedQuote, field, r.off, n, len(r.buf)-r.off)
		return nil
	}
	b := r.buf[r.off : r.off+n]
	r.off += n
	return b
}

func (r *attestReader) u8(field string) uint8 {
	if b := r.take(1, field); b != nil {
		return b[0]
	}
	return 0
}

func (r *attestReader) u16(field string) uint16 {
	if b := r.take(2, field); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}

func (r *attestReader) u32(field string) uint32 {
	if b := r.take(4, field); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

func (r *attestReader) u64(field string) uint64 {
	if b := r.take(8, field); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

func (r *attestReader) sized(field string) []byte {
	n := int(r.u16(field + " size"))
	return bytes.Clone(r.take(n, field))
}

func (r *attestReader) end(field string) error {
	if r.err == nil && r.off != len(r.buf) {
		r.err = fmt.Errorf("%w: %d trailing bytes after %s at byte offset %d", ErrMalformedQuote, len(r.buf)-r.off, field, r.off)
	}
	return r.err
}

// maxSelectBytes is the largest pcrSelect bitmap accepted (PCRs 0 to 255).
// PC Client TPMs have 24 PCRs in a 3-byte bitmap.
const maxSelectBytes = 32

// ParseQuote decodes the quote's TPMS_ATTEST and checks its magic and type.
// It does not check the signature: use VerifyQuote for that.
func ParseQuote(q *Quote) (*QuoteInfo, error) {
	if q == nil {
		return nil, fmt.Errorf("%w: no quote given", ErrMalformedQuote)
	}
	r := &attestReader{buf: q.Attest}

	magic := r.u32("magic")
	if r.err == nil && magic != tpmGeneratedValue {
		return nil, fmt.Errorf("%w: magic is %#08x, expected %#08x", ErrBadMagic, magic, tpmGeneratedValue)
	}
	typ := r.u16("type")
	if r.err == nil && typ != tpmSTAttestQuote {
		return nil, fmt.Errorf("%w: type is %#04x, expected TPM_ST_ATTEST_QUOTE (%#04x)", ErrNotQuote, typ, tpmSTAttestQuote)
	}

	info := &QuoteInfo{Selection: make(map[pcr.Alg][]int)}
	info.QualifiedSigner = r.sized("qualifiedSigner")
	info.ExtraData = r.sized("extraData")
	info.Clock = r.u64("clockInfo.clock")
	info.ResetCount = r.u32("clockInfo.resetCount")
	info.RestartCount = r.u32("clockInfo.restartCount")
	safe := r.u8("clockInfo.safe")
	if r.err == nil && safe > 1 {
		return nil, fmt.Errorf("%w: clockInfo.safe at byte offset %d is %d, expected 0 or 1", ErrMalformedQuote, r.off-1, safe)
	}
	info.Safe = safe == 1
	info.FirmwareVersion = r.u64("firmwareVersion")

	count := r.u32("pcrSelect.count")
	if r.err == nil && count > 16 {
		return nil, fmt.Errorf("%w: pcrSelect lists %d banks, at most 16 are accepted", ErrMalformedQuote, count)
	}
	for i := 0; i < int(count) && r.err == nil; i++ {
		bank := pcr.Alg(r.u16(fmt.Sprintf("pcrSelections[%d].hash", i)))
		size := int(r.u8(fmt.Sprintf("pcrSelections[%d].sizeofSelect", i)))
		if r.err == nil && size > maxSelectBytes {
			return nil, fmt.Errorf("%w: pcrSelections[%d].sizeofSelect is %d, at most %d is accepted", ErrMalformedQuote, i, size, maxSelectBytes)
		}
		bitmap := r.take(size, fmt.Sprintf("pcrSelections[%d].pcrSelect", i))
		if r.err != nil {
			break
		}
		if _, dup := info.Selection[bank]; dup {
			return nil, fmt.Errorf("%w: bank %s selected twice in pcrSelect", ErrMalformedQuote, bank)
		}

		indexes := []int{}
		for index := 0; index < size*8; index++ {
			if bitmap[index/8]&(1<<(index%8)) != 0 {
				indexes = append(indexes, index)
			}
		}
		info.Selection[bank] = indexes
		info.Banks = append(info.Banks, bank)
	}
	info.PCRDigest = r.sized("pcrDigest")
	if err := r.end("TPMS_QUOTE_INFO"); err != nil {
		return nil, err
	}
	return info, nil
}

// Signature is a decoded TPMT_SIGNATURE.
type Signature struct {
	SigAlg uint16  // TPM_ALG_RSASSA (0x0014), TPM_ALG_RSAPSS (0x0016) or TPM_ALG_ECDSA (0x0018)
	Hash   pcr.Alg // the scheme's hash algorithm
	RSA    []byte  // RSA signature, for RSASSA and RSAPSS
	R, S   *big.Int
}

const (
	algRSASSA = 0x0014
	algRSAPSS = 0x0016
	algECDSA  = 0x0018
)

// ParseSignature decodes a marshaled TPMT_SIGNATURE of an RSASSA, RSAPSS or
// ECDSA signature.
func ParseSignature(b []byte) (*Signature, error) {
	r := &attestReader{buf: b}
	sig := &Signature{SigAlg: r.u16("sigAlg")}
	switch {
	case r.err != nil:
	case sig.SigAlg == algRSASSA || sig.SigAlg == algRSAPSS:
		sig.Hash = pcr.Alg(r.u16("signature.hash"))
		sig.RSA = r.sized("signature.sig")
	case sig.SigAlg == algECDSA:
		sig.Hash = pcr.Alg(r.u16("signature.hash"))
		sig.R = new(big.Int).SetBytes(r.sized("signature.signatureR"))
		sig.S = new(big.Int).SetBytes(r.sized("signature.signatureS"))
	default:
		return nil, fmt.Errorf("%w: signature algorithm %#04x is not RSASSA, RSAPSS or ECDSA", ErrMalformedQuote, sig.SigAlg)
	}
	if err := r.end("TPMT_SIGNATURE"); err != nil {
		return nil, err
	}
	return sig, nil
}

// VerifyQuote checks a quote against the AK public key (*ecdsa.PublicKey or
// *rsa.PublicKey), the expected nonce and the PCR values it should cover.
// It checks, in this order, magic and type, the signature over the
// TPMS_ATTEST bytes, extraData against nonce, and pcrDigest against the
// values of the selected PCRs concatenated in the quote's selection order
// and hashed with the signature's hash. values may hold more PCRs than the
// quote selects. It returns the decoded quote when every check passes.
func VerifyQuote(akPublic crypto.PublicKey, q *Quote, nonce []byte, values pcr.Values) (*QuoteInfo, error) {
	info, err := ParseQuote(q)
	if err != nil {
		return nil, err
	}
	sig, err := VerifySignature(akPublic, q)
	if err != nil {
		return nil, err
	}

	if !bytes.Equal(info.ExtraData, nonce) {
		return nil, fmt.Errorf("%w: extraData is %x, expected %x", ErrNonceMismatch, info.ExtraData, nonce)
	}

	if err := CheckPCRDigest(info, sig.Hash, values); err != nil {
		return nil, err
	}
	return info, nil
}

// VerifySignature checks the quote's TPMT_SIGNATURE over its TPMS_ATTEST
// bytes with the AK public key and returns the decoded signature.
func VerifySignature(akPublic crypto.PublicKey, q *Quote) (*Signature, error) {
	sig, err := ParseSignature(q.Signature)
	if err != nil {
		return nil, err
	}
	h, err := sig.Hash.CryptoHash()
	if err != nil {
		return nil, fmt.Errorf("%w: signature hash: %v", ErrMalformedQuote, err)
	}
	hasher := h.New()
	hasher.Write(q.Attest)
	digest := hasher.Sum(nil)

	switch key := akPublic.(type) {
	case *rsa.PublicKey:
		switch sig.SigAlg {
		case algRSASSA:
			err = rsa.VerifyPKCS1v15(key, h, digest, sig.RSA)
		case algRSAPSS:
			err = rsa.VerifyPSS(key, h, digest, sig.RSA, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto})
		default:
			err = fmt.Errorf("an RSA key cannot verify signature algorithm %#04x", sig.SigAlg)
		}
	case *ecdsa.PublicKey:
		if sig.SigAlg != algECDSA {
			err = fmt.Errorf("an ECDSA key cannot verify signature algorithm %#04x", sig.SigAlg)
		} else if !ecdsa.Verify(key, digest, sig.R, sig.S) {
			err = errors.New("ECDSA verification failed")
		}
	default:
		return nil, fmt.Errorf("AK public key of type %T: only *rsa.PublicKey and *ecdsa.PublicKey are supported", akPublic)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v (wrong AK, or the attest or signature bytes were altered)", ErrBadSignature, err)
	}
	return sig, nil
}

// QuotePCRDigest computes the pcrDigest a TPM puts in a quote over the
// selection: the hash, with hashAlg, of the selected PCR values
// concatenated bank by bank in selection order and by ascending index.
func QuotePCRDigest(hashAlg pcr.Alg, banks []pcr.Alg, selection map[pcr.Alg][]int, values pcr.Values) ([]byte, error) {
	h, err := hashAlg.New()
	if err != nil {
		return nil, err
	}
	for _, bank := range banks {
		indexes := slices.Sorted(slices.Values(selection[bank]))
		for _, index := range indexes {
			v, ok := values.Get(bank, index)
			if !ok {
				return nil, fmt.Errorf("%w: %s PCR %d", ErrMissingPCRValue, bank, index)
			}
			h.Write(v)
		}
	}
	return h.Sum(nil), nil
}

// CheckPCRDigest compares the quote's pcrDigest with the digest of values
// over the quote's selection, hashed with hashAlg (the signature's hash).
func CheckPCRDigest(info *QuoteInfo, hashAlg pcr.Alg, values pcr.Values) error {
	want, err := QuotePCRDigest(hashAlg, info.Banks, info.Selection, values)
	if err != nil {
		return err
	}
	if !bytes.Equal(want, info.PCRDigest) {
		return fmt.Errorf("%w: quote has %x, the supplied values give %x", ErrPCRDigestMismatch, info.PCRDigest, want)
	}
	return nil
}
