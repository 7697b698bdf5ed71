package replay

import (
	"errors"
	"strings"
	"testing"

	"github.com/imashard/imashard/pkg/imalog"
	"github.com/imashard/imashard/pkg/pcr"
)

// valuesAfter replays the first m entries of a list.
func valuesAfter(t *testing.T, file string, opts imalog.Options, m int, banks ...pcr.Alg) pcr.Values {
	r := newReplayer(t, nil, banks...)
	entries := openList(t, file, opts)
	for range m {
		e, err := entries.Next()
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Extend(e); err != nil {
			t.Fatal(err)
		}
	}
	return r.Values(nil)
}

func TestFindPrefixLogAheadOfQuote(t *testing.T) {
	const file = "ibmtss__utils_sha256.log.bin"
	opts := imalog.Options{DigestAlg: pcr.SHA256}
	for _, m := range []int{1, 2, 180, 361, 362} {
		target := valuesAfter(t, file, opts, m, pcr.SHA1, pcr.SHA256)
		r := newReplayer(t, nil, pcr.SHA1, pcr.SHA256)
		entries := openList(t, file, opts)
		prefix, err := FindPrefix(entries, r, target)
		if err != nil {
			t.Fatalf("m=%d: %v", m, err)
		}
		if prefix.Entries != int64(m) || r.Entries() != int64(m) || prefix.Last.Index != int64(m-1) {
			t.Errorf("m=%d: prefix of %d entries (replayer %d, last index %d)", m, prefix.Entries, r.Entries(), prefix.Last.Index)
		}
		if prefix.Rules[pcr.SHA256] != RulePerBank {
			t.Errorf("m=%d: sha256 rule %v", m, prefix.Rules[pcr.SHA256])
		}
		// The entries after the prefix are still to be read.
		pending := 0
		for {
			if _, err := entries.Next(); err != nil {
				break
			}
			pending++
		}
		if pending != 362-m {
			t.Errorf("m=%d: %d entries left, want %d", m, pending, 362-m)
		}
	}
}

func TestFindPrefixEmptyPrefix(t *testing.T) {
	// Match must work before the first entry: a target equal to the start
	// state is matched by the empty prefix.
	start := valuesAfter(t, "ibmtss__utils_sha1.log.bin", imalog.Options{}, 5, pcr.SHA1)
	r := newReplayer(t, start, pcr.SHA1)
	prefix, err := FindPrefix(openList(t, "ibmtss__utils_sha1.log.bin", imalog.Options{}), r, start)
	if err != nil {
		t.Fatal(err)
	}
	if prefix.Entries != 0 || prefix.Last != nil {
		t.Errorf("prefix of %d entries, want 0", prefix.Entries)
	}
}

func TestFindPrefixLogShorterThanQuote(t *testing.T) {
	target := valuesAfter(t, "ibmtss__utils_sha1.log.bin", imalog.Options{}, 362, pcr.SHA1, pcr.SHA256)
	// Replaying only the first 12 entries of another list never reaches it.
	r := newReplayer(t, nil, pcr.SHA1, pcr.SHA256)
	_, err := FindPrefix(openList(t, "tpm2tss__sml-ima-ng-sha1.bin", imalog.Options{AllowTruncated: true}), r, target)
	if !errors.Is(err, ErrNoPrefixMatch) {
		t.Fatalf("err = %v, want no prefix match", err)
	}
	for _, want := range []string{"sha1 PCR 10", "sha256 PCR 10", "never matched", "6 entries"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestFindPrefixTwoPCRs(t *testing.T) {
	// PCR 10 and PCR 11 must match at one common prefix.
	data := binaryReader(t, b1Hex, pcr11Hex, b1Hex)
	want := newReplayer(t, nil, pcr.SHA1)
	replayAll(t, binaryReader(t, b1Hex, pcr11Hex), want)

	r := newReplayer(t, nil, pcr.SHA1)
	prefix, err := FindPrefix(data, r, want.Values(nil))
	if err != nil {
		t.Fatal(err)
	}
	if prefix.Entries != 2 {
		t.Errorf("prefix of %d entries, want 2", prefix.Entries)
	}

	// PCR 10 matches after one entry and PCR 11 after two, but a target of
	// PCR 10 after three entries and PCR 11 after two is never reached at
	// once.
	later := newReplayer(t, nil, pcr.SHA1)
	replayAll(t, binaryReader(t, b1Hex, pcr11Hex, b1Hex), later)
	target := want.Values(nil)
	v, _ := later.Values(nil).Get(pcr.SHA1, 10)
	target.Set(pcr.SHA1, 10, v)
	target.Set(pcr.SHA1, 11, make([]byte, 20))
	_, err = FindPrefix(binaryReader(t, b1Hex, pcr11Hex, b1Hex), newReplayer(t, nil, pcr.SHA1), target)
	if !errors.Is(err, ErrNoPrefixMatch) || !strings.Contains(err.Error(), "never together") {
		t.Errorf("err = %v, want a report of PCRs that matched alone", err)
	}
}

func TestFindPrefixUnknownBank(t *testing.T) {
	target := pcr.Values{}
	target.Set(pcr.SHA384, 10, make([]byte, 48))
	_, err := FindPrefix(binaryReader(t, b1Hex), newReplayer(t, nil, pcr.SHA1), target)
	if err == nil || !strings.Contains(err.Error(), "sha384") {
		t.Errorf("err = %v, want the missing bank named", err)
	}
}

func TestMatchDoesNotAllocateOnMismatch(t *testing.T) {
	r := newReplayer(t, nil, pcr.SHA1, pcr.SHA256)
	replayAll(t, binaryReader(t, b1Hex), r)
	target := pcr.Values{}
	target.Set(pcr.SHA1, 10, make([]byte, 20))
	target.Set(pcr.SHA256, 10, make([]byte, 32))
	allocs := testing.AllocsPerRun(100, func() {
		if _, ok := r.Match(target); ok {
			t.Fatal("matched")
		}
	})
	if allocs != 0 {
		t.Errorf("Match allocates %.0f times per call on a mismatch", allocs)
	}
}
