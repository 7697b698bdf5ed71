package tpm

import (
	"fmt"
	"log/slog"
	"maps"
	"slices"

	"github.com/google/go-tpm/tpm2"

	"github.com/imashard/imashard/pkg/pcr"
)

// maxReadAttempts bounds how often ReadPCRs starts over because the PCRs
// changed between two TPM2_PCR_Read calls. IMA extends PCR 10 on every
// measured file, so a busy system can move the PCRs a few times in a row.
const maxReadAttempts = 16

// pcrBanks returns the TPM's PCR selection capability: every bank the TPM
// implements, with the PCRs allocated in it set in the bitmap.
func (t *TPM) pcrBanks() ([]tpm2.TPMSPCRSelection, error) {
	rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapPCRs, PropertyCount: 1}.Execute(t.tpm)
	if err != nil {
		return nil, explain("TPM2_GetCapability(TPM_CAP_PCRS)", err)
	}
	sel, err := rsp.CapabilityData.Data.AssignedPCR()
	if err != nil {
		return nil, fmt.Errorf("TPM2_GetCapability(TPM_CAP_PCRS): %w", err)
	}
	return sel.PCRSelections, nil
}

// Banks returns the allocated PCR banks in the TPM's order. A bank counts as
// allocated when at least one PCR is allocated in it.
func (t *TPM) Banks() ([]pcr.Alg, error) {
	selections, err := t.pcrBanks()
	if err != nil {
		return nil, err
	}

	var banks []pcr.Alg
	for _, s := range selections {
		if slices.ContainsFunc(s.PCRSelect, func(b byte) bool { return b != 0 }) {
			banks = append(banks, pcr.Alg(s.Hash))
		}
	}
	return banks, nil
}

// checkSelection verifies that every bank is allocated and every index is
// allocated in it, so the TPM never silently drops part of a request.
func (t *TPM) checkSelection(banks []pcr.Alg, indexes []int) error {
	if len(banks) == 0 {
		return fmt.Errorf("no PCR bank selected")
	}
	if len(indexes) == 0 {
		return fmt.Errorf("no PCR index selected")
	}

	selections, err := t.pcrBanks()
	if err != nil {
		return err
	}
	allocated := make(map[pcr.Alg][]byte)
	var names []string
	for _, s := range selections {
		if slices.ContainsFunc(s.PCRSelect, func(b byte) bool { return b != 0 }) {
			allocated[pcr.Alg(s.Hash)] = s.PCRSelect
			names = append(names, pcr.Alg(s.Hash).String())
		}
	}

	for _, bank := range banks {
		bitmap, ok := allocated[bank]
		if !ok {
			return fmt.Errorf("%w: %s (allocated banks: %v); change the allocation with tpm2_pcrallocate or select another bank", ErrBankNotAllocated, bank, names)
		}
		for _, index := range indexes {
			if index < 0 || index/8 >= len(bitmap) || bitmap[index/8]&(1<<(index%8)) == 0 {
				return fmt.Errorf("%w: PCR %d is not allocated in the %s bank, which has PCRs 0 to %d", ErrInvalidPCR, index, bank, len(bitmap)*8-1)
			}
		}
	}
	return nil
}

// selection builds one TPML_PCR_SELECTION with a TPMS_PCR_SELECTION per
// bank, in the order of banks. The bitmap is 3 bytes (PCRs 0-23) unless an
// index needs more, which is the TPM's PC Client minimum.
func selection(banks []pcr.Alg, indexes []int) tpm2.TPMLPCRSelection {
	size := 3
	for _, index := range indexes {
		size = max(size, index/8+1)
	}

	var sel tpm2.TPMLPCRSelection
	for _, bank := range banks {
		bitmap := make([]byte, size)
		for _, index := range indexes {
			bitmap[index/8] |= 1 << (index % 8)
		}
		sel.PCRSelections = append(sel.PCRSelections, tpm2.TPMSPCRSelection{
			Hash:      tpm2.TPMIAlgHash(bank),
			PCRSelect: bitmap,
		})
	}
	return sel
}

// ReadPCRs reads the PCRs at indexes in each bank. TPM2_PCR_Read returns at
// most 8 digests per call and may return fewer, so it loops until every PCR
// is read. When pcrUpdateCounter changes between calls, some PCR was
// extended in between, and it reads all of them again rather than mix two
// states.
func (t *TPM) ReadPCRs(banks []pcr.Alg, indexes []int) (pcr.Values, error) {
	if err := t.checkSelection(banks, indexes); err != nil {
		return nil, err
	}

	for attempt := 1; attempt <= maxReadAttempts; attempt++ {
		values, consistent, err := t.readOnce(banks, indexes)
		if err != nil {
			return nil, err
		}
		if consistent {
			return values, nil
		}
		slog.Info("PCRs changed while reading, reading again", "attempt", attempt)
	}
	return nil, fmt.Errorf("PCRs kept changing during %d attempts to read them: retry when fewer measurements are being made", maxReadAttempts)
}

// readOnce reads every requested PCR and reports whether all calls saw the
// same pcrUpdateCounter.
func (t *TPM) readOnce(banks []pcr.Alg, indexes []int) (pcr.Values, bool, error) {
	pending := make(map[pcr.Alg][]int, len(banks))
	for _, bank := range banks {
		pending[bank] = slices.Clone(indexes)
	}
	values := make(pcr.Values)
	var counter uint32

	for call := 0; len(pending) > 0; call++ {
		var left []pcr.Alg
		var sel tpm2.TPMLPCRSelection
		for _, bank := range banks {
			if len(pending[bank]) > 0 {
				left = append(left, bank)
				sel.PCRSelections = append(sel.PCRSelections, selection([]pcr.Alg{bank}, pending[bank]).PCRSelections...)
			}
		}

		rsp, err := tpm2.PCRRead{PCRSelectionIn: sel}.Execute(t.tpm)
		if err != nil {
			return nil, false, explain("TPM2_PCR_Read", err)
		}
		if call == 0 {
			counter = rsp.PCRUpdateCounter
		} else if rsp.PCRUpdateCounter != counter {
			return nil, false, nil
		}

		got, err := assignDigests(rsp.PCRSelectionOut, rsp.PCRValues.Digests)
		if err != nil {
			return nil, false, err
		}
		if len(got) == 0 {
			return nil, false, fmt.Errorf("TPM2_PCR_Read returned no values for %v in banks %v: the TPM does not implement them", pending, left)
		}
		for _, g := range got {
			if !slices.Contains(pending[g.bank], g.index) {
				return nil, false, fmt.Errorf("TPM2_PCR_Read returned %s PCR %d, which was not requested", g.bank, g.index)
			}
			values.Set(g.bank, g.index, g.digest)
			pending[g.bank] = slices.DeleteFunc(pending[g.bank], func(i int) bool { return i == g.index })
			if len(pending[g.bank]) == 0 {
				delete(pending, g.bank)
			}
		}
	}
	return values, true, nil
}

type bankDigest struct {
	bank   pcr.Alg
	index  int
	digest []byte
}

// assignDigests pairs the digests of a TPM2_PCR_Read response with the PCRs
// of pcrSelectionOut: banks in list order, PCRs in ascending order.
func assignDigests(sel tpm2.TPMLPCRSelection, digests []tpm2.TPM2BDigest) ([]bankDigest, error) {
	var out []bankDigest
	next := 0
	for _, s := range sel.PCRSelections {
		bank := pcr.Alg(s.Hash)
		for index := 0; index < len(s.PCRSelect)*8; index++ {
			if s.PCRSelect[index/8]&(1<<(index%8)) == 0 {
				continue
			}
			if next >= len(digests) {
				return nil, fmt.Errorf("TPM2_PCR_Read: pcrSelectionOut names more PCRs than the %d digests returned", len(digests))
			}
			d := digests[next].Buffer
			next++
			if bank.Known() && len(d) != bank.Size() {
				return nil, fmt.Errorf("TPM2_PCR_Read: %s PCR %d has %d bytes, expected %d", bank, index, len(d), bank.Size())
			}
			out = append(out, bankDigest{bank, index, d})
		}
	}
	if next != len(digests) {
		return nil, fmt.Errorf("TPM2_PCR_Read: %d digests returned for %d PCRs in pcrSelectionOut", len(digests), next)
	}
	return out, nil
}

// ExtendPCR extends one PCR with a digest per bank in a single
// TPM2_PCR_Extend, as the kernel does for an IMA entry. Every digest must
// have its bank's size.
func (t *TPM) ExtendPCR(index int, digests map[pcr.Alg][]byte) error {
	if index < 0 || index > 23 {
		return fmt.Errorf("%w: %d: PCR_Extend takes PCR 0 to 23", ErrInvalidPCR, index)
	}
	if len(digests) == 0 {
		return fmt.Errorf("extending PCR %d: no digests given", index)
	}

	var list tpm2.TPMLDigestValues
	for _, bank := range slices.Sorted(maps.Keys(digests)) {
		d := digests[bank]
		if !bank.Known() {
			return fmt.Errorf("extending PCR %d: %w: %s", index, pcr.ErrUnsupportedAlg, bank)
		}
		if len(d) != bank.Size() {
			return fmt.Errorf("extending PCR %d: %s digest has %d bytes, expected %d", index, bank, len(d), bank.Size())
		}
		list.Digests = append(list.Digests, tpm2.TPMTHA{HashAlg: tpm2.TPMIAlgHash(bank), Digest: d})
	}

	_, err := tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(index), Auth: tpm2.PasswordAuth(nil)},
		Digests:   list,
	}.Execute(t.tpm)
	return explain(fmt.Sprintf("TPM2_PCR_Extend of PCR %d", index), err)
}
