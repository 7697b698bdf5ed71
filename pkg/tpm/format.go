package tpm

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"

	"github.com/imashard/imashard/pkg/pcr"
)

// PCR value file formats written by WritePCRs.
const (
	FormatEvmctl = "evmctl" // "PCR-10: <hex>" lines, one bank; evmctl ima_measurement --pcrs reads it
	FormatYAML   = "yaml"   // tpm2_pcrread style: "sha256:" then "  10: 0x<HEX>"
	FormatJSON   = "json"   // {"sha256": {"10": "<hex>"}}
)

// WritePCRs writes values in one of the text formats. Banks appear in
// TPM_ALG_ID order and PCRs in ascending order. The evmctl format has no
// bank name, so it takes exactly one bank.
func WritePCRs(w io.Writer, values pcr.Values, format string) error {
	bw := bufio.NewWriter(w)
	switch format {
	case FormatEvmctl:
		banks := values.Banks()
		if len(banks) != 1 {
			return fmt.Errorf("the evmctl format stores one bank, got %d (%v): select one bank", len(banks), banks)
		}
		for _, index := range values.Indexes(banks[0]) {
			v, _ := values.Get(banks[0], index)
			fmt.Fprintf(bw, "PCR-%02d: %x\n", index, v)
		}

	case FormatYAML:
		for _, bank := range values.Banks() {
			fmt.Fprintf(bw, "%s:\n", bank)
			for _, index := range values.Indexes(bank) {
				v, _ := values.Get(bank, index)
				fmt.Fprintf(bw, "  %d: 0x%X\n", index, v)
			}
		}

	case FormatJSON:
		data, err := json.MarshalIndent(valuesToJSON(values), "", "  ")
		if err != nil {
			return err
		}
		bw.Write(data)
		bw.WriteString("\n")

	default:
		return fmt.Errorf("unknown PCR format %q: use evmctl, yaml or json", format)
	}
	return bw.Flush()
}

// valuesToJSON maps bank names to PCR index strings to lower-case hex.
func valuesToJSON(values pcr.Values) map[string]map[string]string {
	out := make(map[string]map[string]string)
	for _, bank := range values.Banks() {
		out[bank.String()] = make(map[string]string)
		for _, index := range values.Indexes(bank) {
			v, _ := values.Get(bank, index)
			out[bank.String()][strconv.Itoa(index)] = hex.EncodeToString(v)
		}
	}
	return out
}

// ParsePCRsJSON reads the JSON format of WritePCRs.
func ParsePCRsJSON(data []byte) (pcr.Values, error) {
	var raw map[string]map[string]string
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("PCR JSON: %w", err)
	}
	values := make(pcr.Values)
	for name, bank := range raw {
		alg, err := pcr.ParseAlg(name)
		if err != nil {
			return nil, fmt.Errorf("PCR JSON: bank %q: %w", name, err)
		}
		for indexText, hexValue := range bank {
			index, err := strconv.Atoi(indexText)
			if err != nil || index < 0 || index >= 256 {
				return nil, fmt.Errorf("PCR JSON: %s PCR index %q is not a number from 0 to 255", alg, indexText)
			}
			v, err := hex.DecodeString(hexValue)
			if err != nil {
				return nil, fmt.Errorf("PCR JSON: %s PCR %d: %w", alg, index, err)
			}
			if alg.Known() && len(v) != alg.Size() {
				return nil, fmt.Errorf("PCR JSON: %s PCR %d has %d bytes, expected %d", alg, index, len(v), alg.Size())
			}
			values.Set(alg, index, v)
		}
	}
	return values, nil
}

// The tpm2-tools "serialized" PCR file (tpm2_quote -o, tpm2_pcrread -o,
// tpm2_checkquote -f) is a dump of tpm2-tools' C structures in host byte
// order, little-endian on x86 and arm64:
//
//	TPML_PCR_SELECTION: u32 count, then 16 TPMS_PCR_SELECTION of
//	    u16 hash, u8 sizeofSelect, u8 pcrSelect[4], u8 padding (8 bytes each)
//	u32 number of TPML_DIGEST that follow
//	TPML_DIGEST each: u32 count, then 8 TPM2B_DIGEST of
//	    u16 size, u8 buffer[64] (66 bytes each)
//
// The digests follow the selection: banks in order, PCRs ascending, 8 per
// TPML_DIGEST.
const (
	tpm2ToolsMaxBanks     = 16
	tpm2ToolsSelectBytes  = 4
	tpm2ToolsSelSize      = 8
	tpm2ToolsDigestsPerL  = 8
	tpm2ToolsDigestSize   = 66
	tpm2ToolsMaxDigestLen = 64
	tpm2ToolsListSize     = 4 + tpm2ToolsDigestsPerL*tpm2ToolsDigestSize
	// tpm2ToolsMaxLists is tpm2-tools' TPM2_MAX_PCRS bound on the TPML_DIGEST
	// array of a PCR file.
	tpm2ToolsMaxLists = 32
)

// ErrMalformedPCRFile reports a tpm2-tools PCR file that cannot be decoded.
var ErrMalformedPCRFile = errors.New("malformed tpm2-tools PCR file")

// WriteTPM2ToolsPCRs writes the PCRs of the selection (banks in order, the
// same indexes in each) in tpm2-tools' serialized PCR file format.
func WriteTPM2ToolsPCRs(w io.Writer, banks []pcr.Alg, indexes []int, values pcr.Values) error {
	if len(banks) > tpm2ToolsMaxBanks {
		return fmt.Errorf("a tpm2-tools PCR file stores at most %d banks, got %d", tpm2ToolsMaxBanks, len(banks))
	}
	sorted := slices.Sorted(slices.Values(indexes))
	sorted = slices.Compact(sorted)

	var buf bytes.Buffer
	le := binary.LittleEndian
	buf.Write(le.AppendUint32(nil, uint32(len(banks))))
	for i := 0; i < tpm2ToolsMaxBanks; i++ {
		entry := make([]byte, tpm2ToolsSelSize)
		if i < len(banks) {
			le.PutUint16(entry, uint16(banks[i]))
			entry[2] = 3
			for _, index := range sorted {
				if index < 0 || index >= tpm2ToolsSelectBytes*8 {
					return fmt.Errorf("a tpm2-tools PCR file stores PCRs 0 to 31, got %d", index)
				}
				entry[3+index/8] |= 1 << (index % 8)
				if index/8+1 > int(entry[2]) {
					entry[2] = byte(index/8 + 1)
				}
			}
		}
		buf.Write(entry)
	}

	var digests [][]byte
	for _, bank := range banks {
		for _, index := range sorted {
			v, ok := values.Get(bank, index)
			if !ok {
				return fmt.Errorf("%w: %s PCR %d", ErrMissingPCRValue, bank, index)
			}
			if len(v) > tpm2ToolsMaxDigestLen {
				return fmt.Errorf("%s PCR %d has %d bytes, more than the 64 a tpm2-tools PCR file stores", bank, index, len(v))
			}
			digests = append(digests, v)
		}
	}

	lists := (len(digests) + tpm2ToolsDigestsPerL - 1) / tpm2ToolsDigestsPerL
	if lists > tpm2ToolsMaxLists {
		return fmt.Errorf("a tpm2-tools PCR file stores at most %d PCR values, got %d", tpm2ToolsMaxLists*tpm2ToolsDigestsPerL, len(digests))
	}
	buf.Write(le.AppendUint32(nil, uint32(lists)))
	for l := 0; l < lists; l++ {
		chunk := digests[l*tpm2ToolsDigestsPerL : min(len(digests), (l+1)*tpm2ToolsDigestsPerL)]
		list := make([]byte, tpm2ToolsListSize)
		le.PutUint32(list, uint32(len(chunk)))
		for i, d := range chunk {
			at := 4 + i*tpm2ToolsDigestSize
			le.PutUint16(list[at:], uint16(len(d)))
			copy(list[at+2:], d)
		}
		buf.Write(list)
	}

	_, err := w.Write(buf.Bytes())
	return err
}

// ParseTPM2ToolsPCRs decodes a tpm2-tools serialized PCR file. It returns
// the values and the banks in the file's selection order.
func ParseTPM2ToolsPCRs(data []byte) (pcr.Values, []pcr.Alg, error) {
	le := binary.LittleEndian
	selEnd := 4 + tpm2ToolsMaxBanks*tpm2ToolsSelSize
	if len(data) < selEnd+4 {
		return nil, nil, fmt.Errorf("%w: %d bytes, need at least %d for the selection and list count", ErrMalformedPCRFile, len(data), selEnd+4)
	}

	count := le.Uint32(data)
	if count > tpm2ToolsMaxBanks {
		return nil, nil, fmt.Errorf("%w: selection count %d at byte offset 0 exceeds %d", ErrMalformedPCRFile, count, tpm2ToolsMaxBanks)
	}
	type slot struct {
		bank  pcr.Alg
		index int
	}
	var slots []slot
	var banks []pcr.Alg
	for i := 0; i < int(count); i++ {
		at := 4 + i*tpm2ToolsSelSize
		bank := pcr.Alg(le.Uint16(data[at:]))
		size := int(data[at+2])
		if size > tpm2ToolsSelectBytes {
			return nil, nil, fmt.Errorf("%w: sizeofSelect %d at byte offset %d exceeds %d", ErrMalformedPCRFile, size, at+2, tpm2ToolsSelectBytes)
		}
		if slices.Contains(banks, bank) {
			return nil, nil, fmt.Errorf("%w: bank %s selected twice", ErrMalformedPCRFile, bank)
		}
		banks = append(banks, bank)
		for index := 0; index < size*8; index++ {
			if data[at+3+index/8]&(1<<(index%8)) != 0 {
				slots = append(slots, slot{bank, index})
			}
		}
	}

	lists := int(le.Uint32(data[selEnd:]))
	if lists > tpm2ToolsMaxLists {
		return nil, nil, fmt.Errorf("%w: %d digest lists at byte offset %d exceed %d", ErrMalformedPCRFile, lists, selEnd, tpm2ToolsMaxLists)
	}
	if want := selEnd + 4 + lists*tpm2ToolsListSize; len(data) != want {
		return nil, nil, fmt.Errorf("%w: %d bytes, expected %d for %d digest lists", ErrMalformedPCRFile, len(data), want, lists)
	}

	values := make(pcr.Values)
	next := 0
	for l := 0; l < lists; l++ {
		at := selEnd + 4 + l*tpm2ToolsListSize
		n := int(le.Uint32(data[at:]))
		if n > tpm2ToolsDigestsPerL {
			return nil, nil, fmt.Errorf("%w: digest list %d at byte offset %d has count %d, at most %d", ErrMalformedPCRFile, l, at, n, tpm2ToolsDigestsPerL)
		}
		for i := 0; i < n; i++ {
			d := at + 4 + i*tpm2ToolsDigestSize
			size := int(le.Uint16(data[d:]))
			if size > tpm2ToolsMaxDigestLen {
				return nil, nil, fmt.Errorf("%w: digest size %d at byte offset %d exceeds 64", ErrMalformedPCRFile, size, d)
			}
			if next >= len(slots) {
				return nil, nil, fmt.Errorf("%w: more digests than the %d PCRs selected", ErrMalformedPCRFile, len(slots))
			}
			s := slots[next]
			if s.bank.Known() && size != s.bank.Size() {
				return nil, nil, fmt.Errorf("%w: %s PCR %d has %d bytes at byte offset %d, expected %d", ErrMalformedPCRFile, s.bank, s.index, size, d, s.bank.Size())
			}
			values.Set(s.bank, s.index, data[d+2:d+2+size])
			next++
		}
	}
	if next != len(slots) {
		return nil, nil, fmt.Errorf("%w: %d PCRs selected but %d digests present", ErrMalformedPCRFile, len(slots), next)
	}
	return values, banks, nil
}
