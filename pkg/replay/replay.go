// Package replay recomputes PCR values from IMA measurement list entries
// under both rules the kernel has used to extend non-SHA-1 banks. It also
// finds the prefix of a list that replays to given PCR values, such as a
// quote or a PCR read, which the list is usually ahead of.
package replay

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"slices"

	"github.com/imashard/imashard/internal/shasum"
	"github.com/imashard/imashard/pkg/imalog"
	"github.com/imashard/imashard/pkg/pcr"
)

// Rule is the kernel's rule for the value it extends into a bank.
type Rule int

const (
	// RulePerBank: the bank is extended with H_bank(template data), and with
	// 0xFF bytes of the bank size for a violation (Linux 5.8 and later, for
	// banks whose algorithm the kernel can hash).
	RulePerBank Rule = iota + 1
	// RulePaddedSHA1: the bank is extended with the SHA-1 template digest
	// zero-padded to the bank size, and with 20 0xFF bytes zero-padded for a
	// violation (before Linux 5.8, and later for banks the kernel cannot hash).
	RulePaddedSHA1
)

// String returns "per-bank" or "padded-sha1".
func (r Rule) String() string {
	switch r {
	case RulePerBank:
		return "per-bank"
	case RulePaddedSHA1:
		return "padded-sha1"
	}
	return fmt.Sprintf("Rule(%d)", int(r))
}

// ErrNoPrefixMatch: no prefix of the list replays to the target values.
var ErrNoPrefixMatch = errors.New("no prefix of the measurement list matches the PCR values")

// maxPCRIndex bounds the PCR index of an entry, as the list reader's byte
// order check and the PCR file parsers do. The replay keeps a state per
// PCR index, so without it a list could name a new index in every entry
// and make that state grow with the list.
const maxPCRIndex = 0xffff

// checkPCRIndex returns an error for an entry whose PCR index is above
// maxPCRIndex.
func checkPCRIndex(e *imalog.Entry) error {
	if e.PCR <= maxPCRIndex {
		return nil
	}
	return fmt.Errorf("replay entry %d at byte offset %d: %w: PCR index %d is above %d, so the list is corrupt or was read with the wrong byte order or digest algorithm: check the list, or set them (imashard log: --byte-order, --bank)",
		e.Index, e.Offset, imalog.ErrMalformed, e.PCR, maxPCRIndex)
}

// maxKeptMismatches bounds the template hash mismatches kept for reports;
// all are counted.
const maxKeptMismatches = 100

// bankState holds one PCR's value in one bank under both rules. For SHA-1
// both rules give the same value and only perBank is kept.
type bankState struct {
	perBank [sha512.Size]byte
	padded  [sha512.Size]byte
}

type pcrState struct {
	banks []bankState // in the order of Replayer.banks
}

// Replayer extends PCR values with entries, one entry at a time.
type Replayer struct {
	banks          []pcr.Alg
	sizes          []int // digest sizes of banks
	start          pcr.Values
	pcrs           map[uint32]*pcrState
	last           *pcrState
	lastIndex      uint32
	entries        int64
	violations     int64
	mismatches     int64
	keptMismatches []error
	padded         int64
	// paddedUnknown marks banks whose padded-rule values a lazy replay
	// (ReplayAllReopen) did not compute.
	paddedUnknown []bool
}

// New returns a replayer for the banks that starts at start. PCRs absent
// from start begin at zero. An empty banks list means the banks of start.
// Banks must be sha1, sha256, sha384 or sha512.
func New(start pcr.Values, banks []pcr.Alg) (*Replayer, error) {
	if len(banks) == 0 {
		banks = start.Banks()
	}
	if len(banks) == 0 {
		return nil, errors.New("no PCR banks to replay: name at least one bank")
	}
	banks = slices.Clone(banks)
	slices.Sort(banks)
	banks = slices.Compact(banks)
	for _, alg := range banks {
		switch alg {
		case pcr.SHA1, pcr.SHA256, pcr.SHA384, pcr.SHA512:
		default:
			return nil, fmt.Errorf("%w: cannot replay the %s bank: replay supports sha1, sha256, sha384 and sha512", pcr.ErrUnsupportedAlg, alg)
		}
	}
	for _, alg := range start.Banks() {
		if !slices.Contains(banks, alg) {
			return nil, fmt.Errorf("start values hold the %s bank, which is not among the banks to replay %v", alg, banks)
		}
		for _, index := range start.Indexes(alg) {
			value, _ := start.Get(alg, index)
			if len(value) != alg.Size() {
				return nil, fmt.Errorf("start value of %s PCR %d is %d bytes, expected %d", alg, index, len(value), alg.Size())
			}
			if index < 0 {
				return nil, fmt.Errorf("start value for negative PCR index %d", index)
			}
		}
	}
	sizes := make([]int, len(banks))
	for i, alg := range banks {
		sizes[i] = alg.Size()
	}
	return &Replayer{banks: banks, sizes: sizes, start: start.Clone(), pcrs: make(map[uint32]*pcrState)}, nil
}

// Banks returns the replayed banks in TPM_ALG_ID order.
func (r *Replayer) Banks() []pcr.Alg { return slices.Clone(r.banks) }

func (r *Replayer) state(index uint32) *pcrState {
	if r.last != nil && r.lastIndex == index {
		return r.last
	}
	s, ok := r.pcrs[index]
	if !ok {
		s = r.newState(index)
		r.pcrs[index] = s
	}
	r.last, r.lastIndex = s, index
	return s
}

// Extend extends both rules of every bank with the entry, into the entry's
// own PCR index. It also checks the template digest against the hash it
// computes and counts mismatches (see Mismatches). A mismatch is not an
// error, because the kernel extended the digest regardless.
func (r *Replayer) Extend(e *imalog.Entry) error {
	var h hashedEntry
	h.entry = e
	r.hashEntry(&h)
	return r.extendHashed(&h)
}

// Digest checks done by hashEntry.
const (
	digestOK = iota
	digestMismatch
	digestPadded
)

// hashedEntry is an entry with its template hashes in every bank: the
// expensive part of Extend, which ReplayAll computes on another goroutine.
type hashedEntry struct {
	entry     *imalog.Entry
	violation bool
	sha1Hash  [sha1.Size]byte
	perBank   [4][sha512.Size]byte // in the order of Replayer.banks
	digest    int
	err       error
}

// hashEntry fills h from h.entry. It reads only r.banks, which never
// changes, so it may run concurrently with extendHashed.
func (r *Replayer) hashEntry(h *hashedEntry) {
	e := h.entry
	if h.err = checkPCRIndex(e); h.err != nil {
		return
	}
	h.violation = e.IsViolation()
	if h.violation {
		for i := range r.banks {
			for j := range r.sizes[i] {
				h.perBank[i][j] = 0xff
			}
		}
		return
	}

	data := e.TemplateData
	var legacyBuf [20 + 256]byte
	if e.IsLegacy() {
		if len(data) < 20 || len(data)-20 > 255 {
			h.err = fmt.Errorf("replay entry %d at byte offset %d: %w: legacy ima template data of %d bytes is not a 20-byte digest and a name of at most 255 bytes",
				e.Index, e.Offset, imalog.ErrMalformed, len(data))
			return
		}
		copy(legacyBuf[:], data)
		data = legacyBuf[:]
	}

	h.sha1Hash = shasum.SHA1(data)
	var digestAlgHash []byte
	for i, alg := range r.banks {
		switch alg {
		case pcr.SHA1:
			copy(h.perBank[i][:], h.sha1Hash[:])
		default:
			templateHash(alg, data, h.perBank[i][:])
		}
		if alg == e.DigestAlg || (e.DigestAlg == 0 && alg == pcr.SHA1) {
			digestAlgHash = h.perBank[i][:r.sizes[i]]
		}
	}
	h.digest = checkDigest(e, h.sha1Hash[:], digestAlgHash)
}

func checkDigest(e *imalog.Entry, sha1Hash, digestAlgHash []byte) int {
	switch {
	case bytes.Equal(e.TemplateDigest, digestAlgHash):
		return digestOK
	case len(e.TemplateDigest) == sha1.Size && bytes.Equal(e.TemplateDigest, sha1Hash):
		return digestOK
	case len(e.TemplateDigest) > sha1.Size && bytes.Equal(e.TemplateDigest[:sha1.Size], sha1Hash) && allZero(e.TemplateDigest[sha1.Size:]):
		return digestPadded
	}

	// The list's algorithm is not a replayed bank: let the entry compute it.
	if digestAlgHash == nil {
		padded, err := e.VerifyTemplateHash()
		switch {
		case padded:
			return digestPadded
		case err == nil, errors.Is(err, pcr.ErrUnsupportedAlg):
			return digestOK
		}
	}
	return digestMismatch
}

// extendHashed extends every bank with a hashed entry and records the
// result of its digest check.
func (r *Replayer) extendHashed(h *hashedEntry) error {
	if h.err != nil {
		return h.err
	}
	e := h.entry
	s := r.state(e.PCR)

	var paddedMsg [sha512.Size]byte
	if h.violation {
		for i := range sha1.Size {
			paddedMsg[i] = 0xff
		}
	} else {
		copy(paddedMsg[:], h.sha1Hash[:])
	}
	for i, alg := range r.banks {
		size := r.sizes[i]
		b := &s.banks[i]
		extend(alg, b.perBank[:size], h.perBank[i][:size])
		if alg != pcr.SHA1 {
			extend(alg, b.padded[:size], paddedMsg[:size])
		}
	}

	r.entries++
	if h.violation {
		r.violations++
	}
	r.recordDigest(e, h.digest)
	return nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// extend sets value to H_alg(value || msg). value and msg are alg's size.
func extend(alg pcr.Alg, value, msg []byte) {
	switch alg {
	case pcr.SHA1:
		shasum.ExtendSHA1((*[sha1.Size]byte)(value), (*[sha1.Size]byte)(msg))
		return
	case pcr.SHA256:
		shasum.ExtendSHA256((*[sha256.Size]byte)(value), (*[sha256.Size]byte)(msg))
		return
	}

	var buf [2 * sha512.Size]byte
	n := copy(buf[:], value)
	n += copy(buf[n:], msg)
	switch alg {
	case pcr.SHA384:
		h := sha512.Sum384(buf[:n])
		copy(value, h[:])
	case pcr.SHA512:
		h := sha512.Sum512(buf[:n])
		copy(value, h[:])
	}
}

// Values returns the current values of every PCR replayed or given at the
// start, under the rule given per bank. Banks missing from rules use
// RulePerBank.
func (r *Replayer) Values(rules map[pcr.Alg]Rule) pcr.Values {
	out := pcr.Values{}
	for _, index := range r.indexes() {
		s := r.state(index)
		for i, alg := range r.banks {
			value := s.banks[i].perBank[:alg.Size()]
			if rules[alg] == RulePaddedSHA1 && alg != pcr.SHA1 {
				value = s.banks[i].padded[:alg.Size()]
			}
			out.Set(alg, int(index), value)
		}
	}
	return out
}

// Candidates returns the current values under both rules. After
// ReplayAllReopen matched in its first pass, padded holds no values for the
// banks of the target other than sha1.
func (r *Replayer) Candidates() (perBank, padded pcr.Values) {
	perBank, padded = pcr.Values{}, pcr.Values{}
	for _, alg := range r.banks {
		perBank[alg] = map[int][]byte{}
		padded[alg] = map[int][]byte{}
	}
	for _, index := range r.indexes() {
		s := r.state(index)
		for i, alg := range r.banks {
			perBank.Set(alg, int(index), s.banks[i].perBank[:alg.Size()])
			if r.paddedUnknown != nil && r.paddedUnknown[i] {
				continue
			}
			value := s.banks[i].padded[:alg.Size()]
			if alg == pcr.SHA1 {
				value = s.banks[i].perBank[:alg.Size()]
			}
			padded.Set(alg, int(index), value)
		}
	}
	return perBank, padded
}

// indexes returns the PCR indexes extended or given a start value.
func (r *Replayer) indexes() []uint32 {
	seen := map[uint32]bool{}
	for index := range r.pcrs {
		seen[index] = true
	}
	for _, alg := range r.start.Banks() {
		for _, index := range r.start.Indexes(alg) {
			seen[uint32(index)] = true
		}
	}
	out := make([]uint32, 0, len(seen))
	for index := range seen {
		out = append(out, index)
	}
	slices.Sort(out)
	return out
}

// value returns a PCR's current value under a rule without creating state.
func (r *Replayer) value(bankPos int, alg pcr.Alg, index uint32, rule Rule) []byte {
	size := r.sizes[bankPos]
	s, ok := r.pcrs[index]
	if r.last != nil && r.lastIndex == index {
		s, ok = r.last, true
	}
	if !ok {
		if v, ok := r.start.Get(alg, int(index)); ok {
			return v
		}
		return zero[:size]
	}
	if rule == RulePaddedSHA1 && alg != pcr.SHA1 {
		return s.banks[bankPos].padded[:size]
	}
	return s.banks[bankPos].perBank[:size]
}

var zero [sha512.Size]byte

// Match reports whether every bank and PCR in target equals the current
// value under one rule per bank, and returns that rule per bank. Where both
// rules match (as for SHA-1, or before any entry) it reports RulePerBank.
// It allocates only when it matches, so it can run after every entry.
func (r *Replayer) Match(target pcr.Values) (map[pcr.Alg]Rule, bool) {
	if len(target) == 0 {
		return nil, false
	}
	for alg, bank := range target {
		if _, ok := r.matchBank(alg, bank); !ok {
			return nil, false
		}
	}
	rules := make(map[pcr.Alg]Rule, len(target))
	for alg, bank := range target {
		rules[alg], _ = r.matchBank(alg, bank)
	}
	return rules, true
}

func (r *Replayer) matchBank(alg pcr.Alg, bank map[int][]byte) (Rule, bool) {
	pos := slices.Index(r.banks, alg)
	if pos < 0 || len(bank) == 0 {
		return 0, false
	}
	for _, rule := range []Rule{RulePerBank, RulePaddedSHA1} {
		ok := true
		for index, want := range bank {
			if index < 0 || !bytes.Equal(r.value(pos, alg, uint32(index), rule), want) {
				ok = false
				break
			}
		}
		if ok {
			return rule, true
		}
	}
	return 0, false
}

// Entries returns the number of entries extended.
func (r *Replayer) Entries() int64 { return r.entries }

// Violations returns the number of violation entries extended.
func (r *Replayer) Violations() int64 { return r.violations }

// Mismatches returns the number of entries whose template digest did not
// match their template data, and the first of them (at most 100) as
// *imalog.EntryError values wrapping imalog.ErrTemplateHash.
func (r *Replayer) Mismatches() (int64, []error) { return r.mismatches, slices.Clone(r.keptMismatches) }

// PaddedDigests returns the number of entries whose template digest was the
// SHA-1 template hash zero-padded to a larger digest field.
func (r *Replayer) PaddedDigests() int64 { return r.padded }

// Clone returns an independent copy.
func (r *Replayer) Clone() *Replayer {
	c := *r
	c.banks = slices.Clone(r.banks)
	c.sizes = slices.Clone(r.sizes)
	c.start = r.start.Clone()
	c.keptMismatches = slices.Clone(r.keptMismatches)
	c.paddedUnknown = slices.Clone(r.paddedUnknown)
	c.pcrs = make(map[uint32]*pcrState, len(r.pcrs))
	for index, s := range r.pcrs {
		c.pcrs[index] = &pcrState{banks: slices.Clone(s.banks)}
	}
	c.last = nil
	return &c
}
