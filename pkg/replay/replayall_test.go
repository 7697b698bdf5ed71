package replay

import (
	"bytes"
	"crypto/sha1"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/imashard/imashard/pkg/imalog"
	"github.com/imashard/imashard/pkg/pcr"
)

func TestReplayAllMatchesFindPrefix(t *testing.T) {
	const file = "ibmtss__utils_sha256.log.bin"
	opts := imalog.Options{DigestAlg: pcr.SHA256}
	// Prefix lengths across batch boundaries (batches hold 256 entries).
	for _, m := range []int{1, 2, 255, 256, 257, 361, 362} {
		target := valuesAfter(t, file, opts, m, pcr.SHA1, pcr.SHA256)

		sequential := newReplayer(t, nil, pcr.SHA1, pcr.SHA256)
		prefix, err := FindPrefix(openList(t, file, opts), sequential, target)
		if err != nil {
			t.Fatalf("m=%d: FindPrefix: %v", m, err)
		}

		r := newReplayer(t, nil, pcr.SHA1, pcr.SHA256)
		result, err := ReplayAll(openList(t, file, opts), r, target)
		if err != nil {
			t.Fatalf("m=%d: ReplayAll: %v", m, err)
		}
		if result.Prefix.Entries != prefix.Entries || result.Prefix.Entries != int64(m) {
			t.Errorf("m=%d: ReplayAll prefix %d, FindPrefix %d", m, result.Prefix.Entries, prefix.Entries)
		}
		if len(result.Prefix.Rules) != 2 || result.Prefix.Rules[pcr.SHA1] != prefix.Rules[pcr.SHA1] || result.Prefix.Rules[pcr.SHA256] != prefix.Rules[pcr.SHA256] {
			t.Errorf("m=%d: ReplayAll rules %v, FindPrefix %v", m, result.Prefix.Rules, prefix.Rules)
		}
		if r.Entries() != 362 {
			t.Errorf("m=%d: ReplayAll stopped after %d entries", m, r.Entries())
		}
	}
}

func TestReplayAllNoTargetAndNoMatch(t *testing.T) {
	full := newReplayer(t, nil, allBanks...)
	replayAll(t, openList(t, "ibmtss__utils_imatest.log.bin", imalog.Options{}), full)

	r := newReplayer(t, nil, allBanks...)
	result, err := ReplayAll(openList(t, "ibmtss__utils_imatest.log.bin", imalog.Options{}), r, nil)
	if err != nil || result.Prefix != nil {
		t.Fatalf("no target: %+v, %v", result, err)
	}
	perBankA, paddedA := r.Candidates()
	perBankB, paddedB := full.Candidates()
	if perBankA.Diff(perBankB) != nil || paddedA.Diff(paddedB) != nil || r.Violations() != 1 {
		t.Error("ReplayAll and Extend disagree")
	}

	target := pcr.Values{}
	target.Set(pcr.SHA256, 10, make([]byte, 32))
	target[pcr.SHA256][10][0] = 1
	_, err = ReplayAll(openList(t, "ibmtss__utils_imatest.log.bin", imalog.Options{}), newReplayer(t, nil, pcr.SHA256), target)
	if !errors.Is(err, ErrNoPrefixMatch) {
		t.Errorf("err = %v, want no prefix match", err)
	}
}

func TestReplayAllReadError(t *testing.T) {
	// The strict reader fails at the partial tail after 12 entries.
	r := newReplayer(t, nil, pcr.SHA1)
	_, err := ReplayAll(openList(t, "tpm2tss__sml-ima-sha1.bin", imalog.Options{}), r, nil)
	if !errors.Is(err, imalog.ErrTruncated) || r.Entries() != 12 {
		t.Errorf("err = %v after %d entries, want truncated after 12", err, r.Entries())
	}
}

// TestReplayAllReopenPasses checks the lazy padded rule: a per-bank target
// is found in one pass, a padded or mixed one in a second pass, and both
// agree with FindPrefix.
func TestReplayAllReopenPasses(t *testing.T) {
	const file = "ibmtss__utils_imatest.log.bin"
	full := newReplayer(t, nil, allBanks...)
	replayAll(t, openList(t, file, imalog.Options{}), full)
	perBank, padded := full.Candidates()

	mixed := pcr.Values{}
	mixed[pcr.SHA1] = perBank[pcr.SHA1]
	mixed[pcr.SHA256] = perBank[pcr.SHA256]
	mixed[pcr.SHA384] = padded[pcr.SHA384]
	mixed[pcr.SHA512] = padded[pcr.SHA512]

	cases := []struct {
		name   string
		target pcr.Values
		rules  map[pcr.Alg]Rule
		opens  int
	}{
		{"per-bank", perBank, map[pcr.Alg]Rule{pcr.SHA1: RulePerBank, pcr.SHA256: RulePerBank, pcr.SHA384: RulePerBank, pcr.SHA512: RulePerBank}, 1},
		{"padded", padded, map[pcr.Alg]Rule{pcr.SHA1: RulePerBank, pcr.SHA256: RulePaddedSHA1, pcr.SHA384: RulePaddedSHA1, pcr.SHA512: RulePaddedSHA1}, 2},
		{"mixed", mixed, map[pcr.Alg]Rule{pcr.SHA1: RulePerBank, pcr.SHA256: RulePerBank, pcr.SHA384: RulePaddedSHA1, pcr.SHA512: RulePaddedSHA1}, 2},
	}
	for _, c := range cases {
		opens := 0
		open := func() (EntryReader, error) {
			opens++
			return openList(t, file, imalog.Options{}), nil
		}
		r := newReplayer(t, nil, allBanks...)
		result, err := ReplayAllReopen(open, r, c.target)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if opens != c.opens {
			t.Errorf("%s: read the list %d times, want %d", c.name, opens, c.opens)
		}
		if result.Prefix.Entries != full.Entries() || r.Entries() != full.Entries() {
			t.Errorf("%s: prefix %d, replayed %d, want %d", c.name, result.Prefix.Entries, r.Entries(), full.Entries())
		}
		for alg, want := range c.rules {
			if got := result.Prefix.Rules[alg]; got != want {
				t.Errorf("%s: %s rule %v, want %v", c.name, alg, got, want)
			}
		}
		if err := r.Values(result.Prefix.Rules).Diff(c.target); err != nil {
			t.Errorf("%s: final values: %v", c.name, err)
		}
		if r.Violations() != full.Violations() {
			t.Errorf("%s: %d violations, want %d", c.name, r.Violations(), full.Violations())
		}
	}
}

// TestReplayAllLegacyAndViolations replays a list of legacy "ima" entries,
// ima-ng entries and violations, across batch boundaries, and compares
// ReplayAll with Extend in every bank under both rules.
func TestReplayAllLegacyAndViolations(t *testing.T) {
	var list []byte
	for i := range 600 {
		e := &imalog.Entry{PCR: 10, TemplateName: "ima"}
		name := fmt.Sprintf("/usr/bin/prog-%d", i)
		fileDigest := sha1.Sum([]byte(name))
		e.TemplateData = append(fileDigest[:], name...)
		padded := make([]byte, 20+256)
		copy(padded, e.TemplateData)
		digest := sha1.Sum(padded)
		e.TemplateDigest = digest[:]
		switch i % 7 {
		case 3:
			e.TemplateDigest = make([]byte, sha1.Size) // violation
		case 5:
			e.PCR = 11
		}
		var err error
		if list, err = imalog.AppendBinary(list, e, imalog.LittleEndian); err != nil {
			t.Fatal(err)
		}
	}
	open := func() EntryReader { return imalog.NewReader(bytes.NewReader(list), imalog.Options{}) }

	want := newReplayer(t, nil, allBanks...)
	replayAll(t, open(), want)
	got := newReplayer(t, nil, allBanks...)
	if _, err := ReplayAll(open(), got, nil); err != nil {
		t.Fatal(err)
	}
	wantPerBank, wantPadded := want.Candidates()
	gotPerBank, gotPadded := got.Candidates()
	if err := gotPerBank.Diff(wantPerBank); err != nil {
		t.Errorf("per-bank: %v", err)
	}
	if err := gotPadded.Diff(wantPadded); err != nil {
		t.Errorf("padded: %v", err)
	}
	if got.Entries() != 600 || got.Violations() != want.Violations() || want.Violations() == 0 {
		t.Errorf("%d entries, %d violations; want 600, %d", got.Entries(), got.Violations(), want.Violations())
	}
	if n, _ := got.Mismatches(); n != 0 {
		t.Errorf("%d template hash mismatches", n)
	}
}

// TestReplayAllPrehashed forces the reader to compute the sha256 template
// hashes of every batch, a path that otherwise depends on timing, and
// compares the result with Extend.
func TestReplayAllPrehashed(t *testing.T) {
	defer func(old int) { prehashBacklog = old }(prehashBacklog)
	prehashBacklog = 0

	const file = "ibmtss__utils_sha256.log.bin"
	opts := imalog.Options{DigestAlg: pcr.SHA256}
	want := newReplayer(t, nil, pcr.SHA1, pcr.SHA256)
	replayAll(t, openList(t, file, opts), want)
	got := newReplayer(t, nil, pcr.SHA1, pcr.SHA256)
	if _, err := ReplayAll(openList(t, file, opts), got, nil); err != nil {
		t.Fatal(err)
	}
	wantPerBank, wantPadded := want.Candidates()
	gotPerBank, gotPadded := got.Candidates()
	if gotPerBank.Diff(wantPerBank) != nil || gotPadded.Diff(wantPadded) != nil {
		t.Error("prehashed ReplayAll and Extend disagree")
	}
	if n, _ := got.Mismatches(); n != 0 || got.Entries() != 362 {
		t.Errorf("%d entries, %d mismatches; want 362, 0", got.Entries(), n)
	}

	target := valuesAfter(t, file, opts, 300, pcr.SHA1, pcr.SHA256)
	result, err := ReplayAll(openList(t, file, opts), newReplayer(t, nil, pcr.SHA1, pcr.SHA256), target)
	if err != nil || result.Prefix.Entries != 300 {
		t.Errorf("prefix: %+v, %v; want 300 entries", result, err)
	}
}

// largeEntries yields n ima-ng entries of size bytes of template data each.
type largeEntries struct {
	n, size int
	index   int64
}

func (l *largeEntries) Next() (*imalog.Entry, error) {
	if l.index == int64(l.n) {
		return nil, io.EOF
	}
	e := &imalog.Entry{
		Index:          l.index,
		PCR:            10,
		TemplateDigest: bytes.Repeat([]byte{1}, sha1.Size),
		TemplateName:   "ima-ng",
		TemplateData:   make([]byte, l.size),
		DigestAlg:      pcr.SHA1,
	}
	l.index++
	return e, nil
}

// TestReplayAllBatchBytesBounded checks that a batch of large entries ends
// once it reaches maxBatchBytes, so that the batches in flight between the
// reader and the collector stay bounded in size however large the list's
// entries are.
func TestReplayAllBatchBytesBounded(t *testing.T) {
	const entrySize = 64 << 10
	r := newReplayer(t, nil, pcr.SHA1)
	entries := &largeEntries{n: 3 * batchSize, size: entrySize}

	ordered := make(chan *entryBatch, batchesInFlight)
	free := make(chan *entryBatch, batchesInFlight)
	for range batchesInFlight {
		free <- &entryBatch{entries: make([]queuedEntry, 0, batchSize), owned: make([]imalog.Entry, batchSize)}
	}
	done := make(chan struct{})
	defer close(done)
	go r.readBatches(entries, map[uint32]*pcrState{}, ordered, free, nil, done)

	var total int
	for batch := range ordered {
		size := 0
		for i := range batch.entries {
			size += len(batch.entries[i].entry.TemplateData)
		}
		if size > maxBatchBytes+entrySize {
			t.Errorf("batch at entry %d contains %d entries of %d bytes, %d bytes in all; want at most %d",
				batch.base, len(batch.entries), entrySize, size, maxBatchBytes+entrySize)
		}
		total += len(batch.entries)
		batch.entries = batch.entries[:0]
		free <- batch
	}
	if total != 3*batchSize {
		t.Errorf("batches contained %d entries, want %d", total, 3*batchSize)
	}
}

// TestReplayAllLargeEntries checks that batches cut by size replay like
// Extend.
func TestReplayAllLargeEntries(t *testing.T) {
	want := newReplayer(t, nil, pcr.SHA1, pcr.SHA256)
	replayAll(t, &largeEntries{n: 40, size: 300 << 10}, want)
	got := newReplayer(t, nil, pcr.SHA1, pcr.SHA256)
	if _, err := ReplayAll(&largeEntries{n: 40, size: 300 << 10}, got, nil); err != nil {
		t.Fatal(err)
	}
	wantPerBank, wantPadded := want.Candidates()
	gotPerBank, gotPadded := got.Candidates()
	if err := gotPerBank.Diff(wantPerBank); err != nil {
		t.Errorf("per-bank values of ReplayAll and Extend differ: %v", err)
	}
	if err := gotPadded.Diff(wantPadded); err != nil {
		t.Errorf("padded values of ReplayAll and Extend differ: %v", err)
	}
	if got.Entries() != 40 {
		t.Errorf("ReplayAll replayed %d entries, want 40", got.Entries())
	}
	// Every entry's digest is 0x01 bytes, so every template hash mismatches.
	if n, _ := got.Mismatches(); n != 40 {
		t.Errorf("ReplayAll counted %d template hash mismatches, want 40", n)
	}
}

// entryList yields its entries in order.
type entryList []*imalog.Entry

func (l *entryList) Next() (*imalog.Entry, error) {
	if len(*l) == 0 {
		return nil, io.EOF
	}
	e := (*l)[0]
	*l = (*l)[1:]
	return e, nil
}

// TestReplayRejectsPCRIndexAbove0xFFFF checks that a list cannot make the
// replay keep a PCR state per entry by naming a new PCR index in each.
func TestReplayRejectsPCRIndexAbove0xFFFF(t *testing.T) {
	entriesFor := func(index uint32) *entryList {
		data := mustHex(t, "28000000 7368613235363a00 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 03000000 2f6100")
		sum := sha1.Sum(data)
		first := &imalog.Entry{PCR: 10, TemplateDigest: sum[:], TemplateName: "ima-ng", TemplateData: data, DigestAlg: pcr.SHA1}
		second := &imalog.Entry{Index: 1, PCR: index, TemplateDigest: sum[:], TemplateName: "ima-ng", TemplateData: data, DigestAlg: pcr.SHA1}
		violation := &imalog.Entry{Index: 2, PCR: index, TemplateDigest: make([]byte, sha1.Size), TemplateName: "ima-ng", TemplateData: data, DigestAlg: pcr.SHA1}
		return &entryList{first, second, violation}
	}

	for _, index := range []uint32{0xffff, 0x10000, 0xffffffff} {
		wantErr := index > 0xffff

		r := newReplayer(t, nil, pcr.SHA1, pcr.SHA256)
		var err error
		for _, e := range *entriesFor(index) {
			if err = r.Extend(e); err != nil {
				break
			}
		}
		if wantErr != errors.Is(err, imalog.ErrMalformed) {
			t.Errorf("Extend with PCR index %#x: err = %v, want malformed: %v", index, err, wantErr)
		}

		_, err = ReplayAll(entriesFor(index), newReplayer(t, nil, pcr.SHA1, pcr.SHA256), nil)
		if wantErr != errors.Is(err, imalog.ErrMalformed) {
			t.Errorf("ReplayAll with PCR index %#x: err = %v, want malformed: %v", index, err, wantErr)
		}
	}
}
