package replay

import (
	"errors"
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
		if err := result.Values.Diff(target); err != nil {
			t.Errorf("m=%d: values at the prefix: %v", m, err)
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
