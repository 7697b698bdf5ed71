// Package shard cuts a Linux IMA measurement log into quote-anchored shards,
// writes them durably into a chain directory and verifies a chain offline
// with nothing but the attestation key's public key.
//
// The file format is specified in docs/shard-format.md.
package shard

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/fxamacker/cbor/v2"

	"github.com/imashard/imashard/pkg/pcr"
)

// FormatVersion is the shard format version this package writes and reads.
const FormatVersion = 1

// Magic starts every shard file.
var Magic = [8]byte{'I', 'M', 'A', 'S', 'H', 'A', 'R', 'D'}

// Limits that bound memory while decoding untrusted files. A header holds PCR
// values and an AK public area, so 1 MiB leaves room for every bank and PCR.
// TPMS_ATTEST and TPMT_SIGNATURE are bounded by the TPM's buffer sizes,
// which are a few kilobytes.
const (
	prefixSize       = 16
	maxHeaderSize    = 1 << 20
	maxQuotePartSize = 16 << 10
)

// Rule names as stored in a header's rules list. They follow the kernel's
// two ways of extending a non-SHA-1 bank.
const (
	RuleNamePerBank    = "per-bank"
	RuleNamePaddedSHA1 = "padded-sha1"
)

// Sentinel errors. Every error returned by this package that concerns one of
// these conditions wraps the matching sentinel, so callers test with errors.Is.
var (
	ErrBadSignature   = errors.New("quote signature invalid")
	ErrWrongAK        = errors.New("shard signed by a different attestation key")
	ErrHeaderMismatch = errors.New("shard header does not match its contents or quote")
	ErrReplayMismatch = errors.New("replay does not reach the recorded PCR values")
	ErrGap            = errors.New("entries missing between shards")
	ErrDuplicate      = errors.New("shard or entries present twice")
	ErrReorder        = errors.New("shards out of order")
	ErrMissingShard   = errors.New("shard missing from chain")
	ErrResetDetected  = errors.New("TPM reset inside a chain")
	ErrTruncated      = errors.New("shard file truncated")
	ErrUnknownVersion = errors.New("unknown shard format version")
	ErrNoPrefixMatch  = errors.New("no prefix of the log replays to the quoted PCR values")
	ErrMalformed      = errors.New("shard file malformed")
	ErrLocked         = errors.New("chain directory locked by another snapshot")
	// ErrNoMeasurementList reports a kernel without IMA or without securityfs mounted.
	ErrNoMeasurementList = errors.New("IMA measurement list not available")
)

// LogSource describes the measurement list file the entries were read from,
// so a verifier parses the entry section the same way.
type LogSource struct {
	File       string  // base name: binary_runtime_measurements or binary_runtime_measurements_<alg>
	DigestAlg  pcr.Alg // algorithm of the template digest field
	DigestSize int     // template digest field size in bytes
	BigEndian  bool    // integers in host order of a big-endian machine without ima_canonical_fmt
}

// Section is the count, byte size and SHA-256 digest of a run of entries.
type Section struct {
	Count  int64
	Size   int64
	Digest []byte
}

// Header is the authenticated part of a shard. The end quote's qualifying
// data is the SHA-256 of its encoding (see MarshalHeader).
type Header struct {
	Version    uint64
	Sequence   uint64
	FirstIndex int64 // history index (entries since the last TPM reset) of the first entry
	Entries    Section
	Tail       Section // entries after the quoted state, covered by the next quote
	Source     LogSource
	Start      pcr.Values
	End        pcr.Values
	Rules      map[pcr.Alg]string // bank -> RuleNamePerBank or RuleNamePaddedSHA1
	Previous   []byte             // SHA-256 of the previous shard file; empty for sequence 0
	AKPublic   []byte             // TPM2B_PUBLIC of the AK
	BootID     string             // /proc/sys/kernel/random/boot_id when the shard was cut
	// BootFirstIndex is the history index of the first entry of the live
	// list in boot BootID.
	BootFirstIndex int64
}

// EndIndex returns the history index right after the shard's entries and
// tail, where the next shard starts.
func (h *Header) EndIndex() int64 {
	return h.FirstIndex + h.Entries.Count + h.Tail.Count
}

// wire types fix the CBOR layout. Keys are short text strings so that an
// independent verifier can decode the header with any CBOR library.
type wireSection struct {
	Count  uint64 `cbor:"count"`
	Size   uint64 `cbor:"size"`
	Digest []byte `cbor:"sha256"`
}

type wireSource struct {
	File       string `cbor:"file"`
	DigestAlg  uint16 `cbor:"digest_alg"`
	DigestSize uint32 `cbor:"digest_size"`
	BigEndian  bool   `cbor:"big_endian"`
}

type wirePCR struct {
	Alg   uint16 `cbor:"alg"`
	Index uint32 `cbor:"pcr"`
	Value []byte `cbor:"value"`
}

type wireRule struct {
	Alg  uint16 `cbor:"alg"`
	Rule string `cbor:"rule"`
}

type wireHeader struct {
	Version        uint64      `cbor:"version"`
	Sequence       uint64      `cbor:"sequence"`
	FirstIndex     uint64      `cbor:"first_index"`
	Entries        wireSection `cbor:"entries"`
	Tail           wireSection `cbor:"tail"`
	Source         wireSource  `cbor:"source"`
	Start          []wirePCR   `cbor:"start"`
	End            []wirePCR   `cbor:"end"`
	Rules          []wireRule  `cbor:"rules"`
	Previous       []byte      `cbor:"previous"`
	AKPublic       []byte      `cbor:"ak_public"`
	BootID         string      `cbor:"boot_id"`
	BootFirstIndex uint64      `cbor:"boot_first_index"`
}

var (
	encMode cbor.EncMode
	decMode cbor.DecMode
)

func init() {
	var err error
	encMode, err = cbor.CoreDetEncOptions().EncMode()
	if err != nil {
		panic(fmt.Sprintf("shard: CBOR encoding options: %v", err))
	}
	decMode, err = cbor.DecOptions{
		DupMapKey:         cbor.DupMapKeyEnforcedAPF,
		IndefLength:       cbor.IndefLengthForbidden,
		ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
		MaxArrayElements:  1 << 16,
		MaxMapPairs:       64,
		MaxNestedLevels:   8,
	}.DecMode()
	if err != nil {
		panic(fmt.Sprintf("shard: CBOR decoding options: %v", err))
	}
}

func valuesToWire(v pcr.Values) []wirePCR {
	var out []wirePCR
	for _, alg := range v.Banks() {
		for _, index := range v.Indexes(alg) {
			value, _ := v.Get(alg, index)
			out = append(out, wirePCR{Alg: uint16(alg), Index: uint32(index), Value: value})
		}
	}
	return out
}

// valuesFromWire rejects lists that are not sorted by bank then index, so
// that each set of values has exactly one encoding.
func valuesFromWire(list []wirePCR, field string) (pcr.Values, error) {
	v := pcr.Values{}
	for i, p := range list {
		alg := pcr.Alg(p.Alg)
		if alg.Known() && len(p.Value) != alg.Size() {
			return nil, fmt.Errorf("%w: %s[%d]: %s PCR %d value is %d bytes, want %d", ErrMalformed, field, i, alg, p.Index, len(p.Value), alg.Size())
		}
		if len(p.Value) == 0 || p.Index > 1<<16 {
			return nil, fmt.Errorf("%w: %s[%d]: invalid PCR %d in bank %s", ErrMalformed, field, i, p.Index, alg)
		}
		if i > 0 {
			prev := list[i-1]
			if prev.Alg > p.Alg || (prev.Alg == p.Alg && prev.Index >= p.Index) {
				return nil, fmt.Errorf("%w: %s[%d]: PCR values not sorted by bank and index", ErrMalformed, field, i)
			}
		}
		v.Set(alg, int(p.Index), p.Value)
	}
	return v, nil
}

// MarshalHeader returns the canonical header: the 16-byte file prefix
// (magic, version, CBOR length) followed by the header in deterministic CBOR.
// The end quote's qualifying data is SHA-256 of exactly these bytes.
func MarshalHeader(h *Header) ([]byte, error) {
	if h.Version != FormatVersion {
		return nil, fmt.Errorf("%w: cannot write version %d, this build writes %d", ErrUnknownVersion, h.Version, FormatVersion)
	}
	if h.FirstIndex < 0 || h.BootFirstIndex < 0 || h.Entries.Count < 0 || h.Tail.Count < 0 || h.Entries.Size < 0 || h.Tail.Size < 0 {
		return nil, fmt.Errorf("%w: negative index, count or size in header", ErrMalformed)
	}

	w := wireHeader{
		Version:        h.Version,
		Sequence:       h.Sequence,
		FirstIndex:     uint64(h.FirstIndex),
		Entries:        wireSection{uint64(h.Entries.Count), uint64(h.Entries.Size), h.Entries.Digest},
		Tail:           wireSection{uint64(h.Tail.Count), uint64(h.Tail.Size), h.Tail.Digest},
		Source:         wireSource{h.Source.File, uint16(h.Source.DigestAlg), uint32(h.Source.DigestSize), h.Source.BigEndian},
		Start:          valuesToWire(h.Start),
		End:            valuesToWire(h.End),
		Previous:       h.Previous,
		AKPublic:       h.AKPublic,
		BootID:         h.BootID,
		BootFirstIndex: uint64(h.BootFirstIndex),
	}
	for _, alg := range slices.Sorted(maps.Keys(h.Rules)) {
		w.Rules = append(w.Rules, wireRule{uint16(alg), h.Rules[alg]})
	}

	body, err := encMode.Marshal(&w)
	if err != nil {
		return nil, fmt.Errorf("encode shard header: %w", err)
	}
	if len(body) > maxHeaderSize {
		return nil, fmt.Errorf("%w: header is %d bytes, limit %d", ErrMalformed, len(body), maxHeaderSize)
	}

	out := make([]byte, prefixSize, prefixSize+len(body))
	copy(out, Magic[:])
	binary.BigEndian.PutUint32(out[8:], FormatVersion)
	binary.BigEndian.PutUint32(out[12:], uint32(len(body)))
	return append(out, body...), nil
}

// parsePrefix checks the magic and version and returns the CBOR length.
func parsePrefix(prefix []byte) (int, error) {
	if len(prefix) < prefixSize {
		return 0, fmt.Errorf("%w: %d bytes, the file prefix needs %d", ErrTruncated, len(prefix), prefixSize)
	}
	if !bytes.Equal(prefix[:8], Magic[:]) {
		return 0, fmt.Errorf("%w: magic %q at offset 0, want %q: not a shard file", ErrMalformed, prefix[:8], Magic[:])
	}
	if v := binary.BigEndian.Uint32(prefix[8:]); v != FormatVersion {
		return 0, fmt.Errorf("%w: version %d at offset 8, this build reads version %d: use a newer imashard", ErrUnknownVersion, v, FormatVersion)
	}
	n := binary.BigEndian.Uint32(prefix[12:])
	if n == 0 || n > maxHeaderSize {
		return 0, fmt.Errorf("%w: header length %d at offset 12 outside 1..%d", ErrMalformed, n, maxHeaderSize)
	}
	return int(n), nil
}

// UnmarshalHeader decodes a canonical header as returned by MarshalHeader.
// It rejects any encoding that MarshalHeader would not produce, so that one
// header has exactly one byte representation.
func UnmarshalHeader(data []byte) (*Header, error) {
	n, err := parsePrefix(data)
	if err != nil {
		return nil, err
	}
	if len(data) < prefixSize+n {
		return nil, fmt.Errorf("%w: header needs %d bytes, have %d", ErrTruncated, prefixSize+n, len(data))
	}
	if len(data) > prefixSize+n {
		return nil, fmt.Errorf("%w: %d bytes after the header", ErrMalformed, len(data)-prefixSize-n)
	}

	var w wireHeader
	if err := decMode.Unmarshal(data[prefixSize:], &w); err != nil {
		return nil, fmt.Errorf("%w: header at offset %d: %v", ErrMalformed, prefixSize, err)
	}
	h, err := headerFromWire(&w)
	if err != nil {
		return nil, err
	}

	again, err := MarshalHeader(h)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(again, data) {
		return nil, fmt.Errorf("%w: header is not in canonical encoding", ErrMalformed)
	}
	return h, nil
}

func headerFromWire(w *wireHeader) (*Header, error) {
	if w.Version != FormatVersion {
		return nil, fmt.Errorf("%w: header version %d, file prefix version %d", ErrUnknownVersion, w.Version, FormatVersion)
	}
	const maxInt = 1<<63 - 1
	for name, v := range map[string]uint64{
		"first_index": w.FirstIndex, "boot_first_index": w.BootFirstIndex,
		"entries.count": w.Entries.Count, "entries.size": w.Entries.Size,
		"tail.count": w.Tail.Count, "tail.size": w.Tail.Size,
	} {
		if v > maxInt/4 {
			return nil, fmt.Errorf("%w: %s %d out of range", ErrMalformed, name, v)
		}
	}
	for name, s := range map[string]wireSection{"entries": w.Entries, "tail": w.Tail} {
		if len(s.Digest) != sha256.Size {
			return nil, fmt.Errorf("%w: %s.sha256 is %d bytes, want %d", ErrMalformed, name, len(s.Digest), sha256.Size)
		}
	}
	if w.Sequence == 0 && len(w.Previous) != 0 || w.Sequence > 0 && len(w.Previous) != sha256.Size {
		return nil, fmt.Errorf("%w: previous is %d bytes for sequence %d", ErrMalformed, len(w.Previous), w.Sequence)
	}
	if w.Source.DigestSize == 0 || w.Source.DigestSize > 1024 {
		return nil, fmt.Errorf("%w: source digest_size %d", ErrMalformed, w.Source.DigestSize)
	}

	start, err := valuesFromWire(w.Start, "start")
	if err != nil {
		return nil, err
	}
	end, err := valuesFromWire(w.End, "end")
	if err != nil {
		return nil, err
	}
	if len(w.End) == 0 {
		return nil, fmt.Errorf("%w: no end PCR values", ErrMalformed)
	}

	rules := make(map[pcr.Alg]string, len(w.Rules))
	for i, r := range w.Rules {
		if r.Rule != RuleNamePerBank && r.Rule != RuleNamePaddedSHA1 {
			return nil, fmt.Errorf("%w: rules[%d]: unknown rule %q", ErrMalformed, i, r.Rule)
		}
		if i > 0 && w.Rules[i-1].Alg >= r.Alg {
			return nil, fmt.Errorf("%w: rules[%d]: not sorted by bank", ErrMalformed, i)
		}
		rules[pcr.Alg(r.Alg)] = r.Rule
	}

	return &Header{
		Version:        w.Version,
		Sequence:       w.Sequence,
		FirstIndex:     int64(w.FirstIndex),
		Entries:        Section{int64(w.Entries.Count), int64(w.Entries.Size), w.Entries.Digest},
		Tail:           Section{int64(w.Tail.Count), int64(w.Tail.Size), w.Tail.Digest},
		Source:         LogSource{w.Source.File, pcr.Alg(w.Source.DigestAlg), int(w.Source.DigestSize), w.Source.BigEndian},
		Start:          start,
		End:            end,
		Rules:          rules,
		Previous:       w.Previous,
		AKPublic:       w.AKPublic,
		BootID:         w.BootID,
		BootFirstIndex: int64(w.BootFirstIndex),
	}, nil
}

// Trailer holds the end quote exactly as the TPM returned it.
type Trailer struct {
	Attest    []byte // marshaled TPMS_ATTEST
	Signature []byte // marshaled TPMT_SIGNATURE
}

// MarshalTrailer encodes the trailer: a 4-byte big-endian length and the
// TPMS_ATTEST, then a 4-byte big-endian length and the TPMT_SIGNATURE.
func MarshalTrailer(t Trailer) ([]byte, error) {
	if len(t.Attest) == 0 || len(t.Attest) > maxQuotePartSize || len(t.Signature) == 0 || len(t.Signature) > maxQuotePartSize {
		return nil, fmt.Errorf("%w: quote sizes %d and %d outside 1..%d", ErrMalformed, len(t.Attest), len(t.Signature), maxQuotePartSize)
	}
	out := binary.BigEndian.AppendUint32(nil, uint32(len(t.Attest)))
	out = append(out, t.Attest...)
	out = binary.BigEndian.AppendUint32(out, uint32(len(t.Signature)))
	return append(out, t.Signature...), nil
}

// UnmarshalTrailer decodes the bytes from the end of the tail section to the
// end of the file. offset is the trailer's position in the file, for errors.
func UnmarshalTrailer(data []byte, offset int64) (Trailer, error) {
	var t Trailer
	rest := data
	for i, field := range []*[]byte{&t.Attest, &t.Signature} {
		name := [...]string{"TPMS_ATTEST", "TPMT_SIGNATURE"}[i]
		at := offset + int64(len(data)-len(rest))
		if len(rest) < 4 {
			return t, fmt.Errorf("%w: %s length at offset %d missing", ErrTruncated, name, at)
		}
		n := binary.BigEndian.Uint32(rest)
		if n == 0 || n > maxQuotePartSize {
			return t, fmt.Errorf("%w: %s length %d at offset %d outside 1..%d", ErrMalformed, name, n, at, maxQuotePartSize)
		}
		if uint32(len(rest)-4) < n {
			return t, fmt.Errorf("%w: %s at offset %d needs %d bytes, have %d", ErrTruncated, name, at+4, n, len(rest)-4)
		}
		*field = bytes.Clone(rest[4 : 4+n])
		rest = rest[4+n:]
	}
	if len(rest) != 0 {
		return t, fmt.Errorf("%w: %d unexpected bytes at offset %d after the quote", ErrMalformed, len(rest), offset+int64(len(data)-len(rest)))
	}
	return t, nil
}
