package replay

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/imashard/imashard/pkg/imalog"
	"github.com/imashard/imashard/pkg/pcr"
)

// FuzzReplayAll compares ReplayAll and ReplayAllReopen, with their reader
// and bank goroutines, against Extend and FindPrefix on one goroutine: the
// same final values and counts, and the same shortest prefix for a target
// taken from the sequential replay after m entries.
func FuzzReplayAll(f *testing.F) {
	for _, name := range []string{"ibmtss__utils_imatest.log.bin", "tpm2tss__sml-ima-sha1-invalidated.bin", "tpm2tss__sml-ima-sig-sha256.bin"} {
		data, err := os.ReadFile(filepath.Join(corpusDir, name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data, uint16(3), uint8(0x0f), false)
		f.Add(data, uint16(1000), uint8(0xf3), true)
	}
	f.Fuzz(func(t *testing.T, data []byte, m uint16, mask uint8, prehash bool) {
		if prehash {
			defer func(old int) { prehashBacklog = old }(prehashBacklog)
			prehashBacklog = 0
		}
		// The low four bits of mask select the banks, the high four the
		// rule of each bank's target.
		var banks []pcr.Alg
		for i, alg := range allBanks {
			if mask&(1<<i) != 0 {
				banks = append(banks, alg)
			}
		}
		if len(banks) == 0 {
			banks = []pcr.Alg{pcr.SHA1}
		}
		open := func() (EntryReader, error) {
			return imalog.NewReader(bytes.NewReader(data), imalog.Options{AllowTruncated: true}), nil
		}

		// The sequential replay of the whole list, and the target after
		// its first m entries.
		full := newReplayer(t, nil, banks...)
		atM := newReplayer(t, nil, banks...)
		entries, _ := open()
		var n int64
		for {
			e, err := entries.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return
			}
			if err := full.Extend(e); err != nil {
				return
			}
			if n < int64(m) {
				if err := atM.Extend(e); err != nil {
					t.Fatal(err)
				}
			}
			n++
		}
		rules := map[pcr.Alg]Rule{}
		for i, alg := range banks {
			rules[alg] = RulePerBank
			if mask&(0x10<<i) != 0 {
				rules[alg] = RulePaddedSHA1
			}
		}
		target := atM.Values(rules)

		// FindPrefix needs a target, and a list without entries has none.
		want, wantErr := &Prefix{}, error(nil)
		if len(target) == 0 {
			target = nil
		} else {
			entries, _ = open()
			want, wantErr = FindPrefix(entries, newReplayer(t, nil, banks...), target)
		}

		for _, reopen := range []bool{false, true} {
			r := newReplayer(t, nil, banks...)
			var result *Result
			var err error
			if reopen {
				result, err = ReplayAllReopen(open, r, target)
			} else {
				entries, _ = open()
				result, err = ReplayAll(entries, r, target)
			}

			if (err == nil) != (wantErr == nil) || (err != nil && !errors.Is(err, ErrNoPrefixMatch)) {
				t.Fatalf("reopen %v: ReplayAll error %v, FindPrefix error %v", reopen, err, wantErr)
			}
			if err == nil && target != nil {
				if result.Prefix.Entries != want.Entries {
					t.Fatalf("reopen %v: ReplayAll prefix of %d entries, FindPrefix %d", reopen, result.Prefix.Entries, want.Entries)
				}
				for alg, rule := range want.Rules {
					if result.Prefix.Rules[alg] != rule {
						t.Fatalf("reopen %v: ReplayAll %s rule %v, FindPrefix %v", reopen, alg, result.Prefix.Rules[alg], rule)
					}
				}
			}

			if r.Entries() != full.Entries() || r.Violations() != full.Violations() {
				t.Fatalf("reopen %v: %d entries, %d violations; Extend gives %d, %d", reopen, r.Entries(), r.Violations(), full.Entries(), full.Violations())
			}
			gotMismatches, _ := r.Mismatches()
			wantMismatches, _ := full.Mismatches()
			if gotMismatches != wantMismatches || r.PaddedDigests() != full.PaddedDigests() {
				t.Fatalf("reopen %v: %d mismatches, %d padded digests; Extend gives %d, %d", reopen, gotMismatches, r.PaddedDigests(), wantMismatches, full.PaddedDigests())
			}
			gotPerBank, gotPadded := r.Candidates()
			wantPerBank, wantPadded := full.Candidates()
			if err := gotPerBank.Diff(wantPerBank); err != nil {
				t.Fatalf("reopen %v: per-bank values: %v", reopen, err)
			}
			if !reopen || err != nil {
				if err := gotPadded.Diff(wantPadded); err != nil {
					t.Fatalf("reopen %v: padded values: %v", reopen, err)
				}
			}
		}
	})
}
