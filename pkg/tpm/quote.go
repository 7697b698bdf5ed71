package tpm

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"log/slog"

	"github.com/google/go-tpm/tpm2"

	"github.com/imashard/imashard/pkg/pcr"
)

// maxQuoteAttempts bounds how often QuoteWithValues quotes again because the
// PCRs moved between reading them and quoting.
const maxQuoteAttempts = 16

// MaxNonceSize returns the largest qualifying data the TPM accepts in
// TPM2_Quote. TPM2B_DATA holds at most sizeof(TPMT_HA): 2 bytes of algorithm
// ID plus the largest digest among the hash algorithms the TPM implements.
func (t *TPM) MaxNonceSize() (int, error) {
	rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapAlgs, Property: 0, PropertyCount: 256}.Execute(t.tpm)
	if err != nil {
		return 0, explain("TPM2_GetCapability(TPM_CAP_ALGS)", err)
	}
	algs, err := rsp.CapabilityData.Data.Algorithms()
	if err != nil {
		return 0, fmt.Errorf("TPM2_GetCapability(TPM_CAP_ALGS): %w", err)
	}

	largest := 0
	for _, a := range algs.AlgProperties {
		if a.AlgProperties.Hash {
			largest = max(largest, pcr.Alg(a.Alg).Size())
		}
	}
	if largest == 0 {
		return 0, fmt.Errorf("TPM2_GetCapability(TPM_CAP_ALGS) lists no hash algorithm this program knows")
	}
	return 2 + largest, nil
}

// Quote signs the PCRs at indexes in every bank with the AK, over one
// TPML_PCR_SELECTION with a TPMS_PCR_SELECTION per bank in the given order.
// nonce becomes the quote's extraData and may be up to MaxNonceSize bytes.
func (t *TPM) Quote(ak *AK, nonce []byte, banks []pcr.Alg, indexes []int) (*Quote, error) {
	if ak == nil || ak.handle == 0 {
		return nil, fmt.Errorf("quote: the AK is not loaded: call LoadAK first")
	}
	if err := t.checkSelection(banks, indexes); err != nil {
		return nil, err
	}
	if len(nonce) > 0 {
		limit, err := t.MaxNonceSize()
		if err != nil {
			return nil, err
		}
		if len(nonce) > limit {
			return nil, fmt.Errorf("%w: %d bytes, this TPM accepts at most %d (2 plus its largest digest size)", ErrNonceTooLarge, len(nonce), limit)
		}
	}

	_, err := tpm2.Quote{
		SignHandle:     tpm2.AuthHandle{Handle: ak.handle, Name: tpm2.TPM2BName{Buffer: ak.Name}, Auth: tpm2.PasswordAuth(nil)},
		QualifyingData: tpm2.TPM2BData{Buffer: nonce},
		InScheme:       ak.scheme,
		PCRSelect:      selection(banks, indexes),
	}.Execute(t.tpm)
	if err != nil {
		return nil, explain(fmt.Sprintf("TPM2_Quote over PCRs %v in banks %v", indexes, banks), err)
	}

	// Take both fields from the raw response, so they are byte-exact even
	// where go-tpm would re-encode them.
	q, err := splitQuoteResponse(t.tpm.lastResponse)
	if err != nil {
		return nil, err
	}
	return q, nil
}

// splitQuoteResponse cuts a TPM2_Quote response with sessions into its
// TPM2B_ATTEST contents and TPMT_SIGNATURE: header (10 bytes),
// parameterSize (4), quoted (2 + n), signature (the rest of the parameters).
func splitQuoteResponse(rsp []byte) (*Quote, error) {
	if len(rsp) < 16 {
		return nil, fmt.Errorf("TPM2_Quote response has %d bytes, too short", len(rsp))
	}
	paramSize := int(binary.BigEndian.Uint32(rsp[10:14]))
	if 14+paramSize > len(rsp) {
		return nil, fmt.Errorf("TPM2_Quote response: parameterSize %d exceeds the %d bytes received", paramSize, len(rsp)-14)
	}
	params := rsp[14 : 14+paramSize]
	if len(params) < 2 {
		return nil, fmt.Errorf("TPM2_Quote response: parameterSize %d leaves no room for TPM2B_ATTEST", paramSize)
	}
	attestSize := int(binary.BigEndian.Uint16(params))
	if 2+attestSize > len(params) {
		return nil, fmt.Errorf("TPM2_Quote response: TPM2B_ATTEST size %d exceeds the %d parameter bytes", attestSize, len(params))
	}
	return &Quote{
		Attest:    bytes.Clone(params[2 : 2+attestSize]),
		Signature: bytes.Clone(params[2+attestSize:]),
	}, nil
}

// QuoteWithValues quotes the PCRs and also returns their values, checked
// against the quote's pcrDigest. It reads the PCRs, quotes, and reads them
// again, and starts over while a measurement moved them in between.
func (t *TPM) QuoteWithValues(ak *AK, nonce []byte, banks []pcr.Alg, indexes []int) (*Quote, pcr.Values, error) {
	for attempt := 1; attempt <= maxQuoteAttempts; attempt++ {
		before, err := t.ReadPCRs(banks, indexes)
		if err != nil {
			return nil, nil, err
		}
		q, err := t.Quote(ak, nonce, banks, indexes)
		if err != nil {
			return nil, nil, err
		}
		after, err := t.ReadPCRs(banks, indexes)
		if err != nil {
			return nil, nil, err
		}
		if !before.Equal(after) {
			slog.Info("PCRs changed while quoting, quoting again", "attempt", attempt)
			continue
		}

		// An extend cannot bring a PCR back to an earlier value, so equal
		// reads mean the quote saw these values. The digest check guards
		// against a TPM that quoted something else.
		info, err := ParseQuote(q)
		if err != nil {
			return nil, nil, fmt.Errorf("quote returned by the TPM: %w", err)
		}
		sig, err := ParseSignature(q.Signature)
		if err != nil {
			return nil, nil, fmt.Errorf("quote returned by the TPM: %w", err)
		}
		if err := CheckPCRDigest(info, sig.Hash, after); err != nil {
			return nil, nil, fmt.Errorf("quote returned by the TPM: %w", err)
		}
		return q, after, nil
	}
	return nil, nil, fmt.Errorf("PCRs kept changing during %d attempts to quote them: retry when fewer measurements are being made", maxQuoteAttempts)
}
