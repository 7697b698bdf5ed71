package trim

import (
	"bytes"
	"errors"
	"io"
	"os"
	"testing"

	"github.com/imashard/imashard/internal/tpmtest"
	"github.com/imashard/imashard/pkg/imalog"
	"github.com/imashard/imashard/pkg/pcr"
	"github.com/imashard/imashard/pkg/tpm"
)

// readEntries returns the entries of a binary SHA-1 list in testdata.
func readEntries(t *testing.T, path string) []*imalog.Entry {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := imalog.NewReader(f, imalog.Options{})
	var out []*imalog.Entry
	for {
		e, err := r.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
}

// openTestTPM starts a swtpm and opens it, or skips without swtpm.
func openTestTPM(t *testing.T) *tpm.TPM {
	t.Helper()
	tp, err := tpm.Open(tpmtest.Start(t).Spec())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tp.Close() })
	return tp
}

// extendEntries extends the TPM with each entry, as the kernel does after
// appending it to the list.
func extendEntries(t *testing.T, tp *tpm.TPM, banks []pcr.Alg, entries ...*imalog.Entry) {
	t.Helper()
	for _, e := range entries {
		digests := map[pcr.Alg][]byte{}
		for _, alg := range banks {
			h, err := e.TemplateHash(alg)
			if err != nil {
				t.Fatal(err)
			}
			digests[alg] = h
		}
		if err := tp.ExtendPCR(int(e.PCR), digests); err != nil {
			t.Fatal(err)
		}
	}
}

// An interrupted count trim of 2 entries from the list A B A B leaves a
// list that starts with A B whether or not the kernel deleted them. The
// TPM, which saw every extend, decides: a real swtpm is extended with the
// true history, and Trim's decision must follow it. (A kernel repeats
// only violation entries; TestGuestTrimAmbiguous covers that case.)
func TestResolvePendingByReplay(t *testing.T) {
	log := readEntries(t, "../shard/testdata/ima-ng-sha1.bin")
	if len(log) < 6 {
		t.Fatalf("testdata has %d entries, want at least 6", len(log))
	}
	prefix, a, b := log[:4], log[4], log[5]
	raw := func(es ...*imalog.Entry) [][]byte {
		var out [][]byte
		for _, e := range es {
			out = append(out, e.Raw)
		}
		return out
	}
	// History: the prefix (trimmed earlier, in shards), then A B A B. The
	// shards hold it up to A B, and the trim deletes those two.
	history := raw(append(append([]*imalog.Entry{}, prefix...), a, b, a, b)...)
	const kernelStart = 4
	intentList := history[kernelStart:]

	for _, deletedTruth := range []bool{true, false} {
		name := "not deleted"
		if deletedTruth {
			name = "deleted"
		}
		t.Run(name, func(t *testing.T) {
			tp := openTestTPM(t)
			banks, err := tp.Banks()
			if err != nil {
				t.Fatal(err)
			}
			extendEntries(t, tp, banks, prefix...)
			extendEntries(t, tp, banks, a, b)
			anchorValues, err := tp.ReadPCRs(banks, []int{10})
			if err != nil {
				t.Fatal(err)
			}
			extendEntries(t, tp, banks, a, b)

			covered := Covered{Start: 0, Raw: history[:kernelStart+2], Anchor: &Anchor{Index: kernelStart + 2, Values: anchorValues}}
			list := intentList
			if deletedTruth {
				list = intentList[2:]
			}
			st := &State{LiveStart: kernelStart, Pending: &PendingTrim{
				Count: 2, ListEntries: 4,
				HeadDigest: digestEntries(intentList[:2]), KeptDigest: digestEntries(intentList[2:]),
				After: &State{LiveStart: kernelStart + 2},
			}}
			opts := Options{Alg: pcr.SHA1, ReadPCRs: tp.ReadPCRs}
			decide := func() (bool, error) {
				return decideByReplay(opts, st.Pending, st.KernelStart(), covered, func() ([][]byte, error) { return list, nil })
			}

			if err := resolvePending(t.TempDir(), st, kernelView{current: list}, decide); err != nil {
				t.Fatalf("resolvePending: %v", err)
			}
			want := int64(kernelStart)
			if deletedTruth {
				want = kernelStart + 2
			}
			if st.LiveStart != want || st.Pending != nil {
				t.Errorf("state after resolving = live start %d, pending %v; want live start %d and no pending trim", st.LiveStart, st.Pending, want)
			}
		})
	}
}

// Without a TPM reader or a shard anchor the decision stays ErrAmbiguous.
func TestDecideByReplayNeedsTPM(t *testing.T) {
	p := &PendingTrim{Count: 1, ListEntries: 2}
	_, err := decideByReplay(Options{Alg: pcr.SHA1}, p, 0, Covered{}, func() ([][]byte, error) { return nil, nil })
	if !errors.Is(err, ErrAmbiguous) {
		t.Fatalf("decideByReplay without a TPM = %v, want ErrAmbiguous", err)
	}
}

// Both candidates matching is reported, not guessed: entries that extend
// no quoted PCR leave the PCRs the same under either outcome.
func TestDecideByReplayBothMatch(t *testing.T) {
	tp := openTestTPM(t)
	banks, err := tp.Banks()
	if err != nil {
		t.Fatal(err)
	}
	anchor, err := tp.ReadPCRs(banks, []int{10})
	if err != nil {
		t.Fatal(err)
	}
	log := readEntries(t, "../shard/testdata/ima-ng-sha1.bin")
	// An entry for PCR 11 is not in the quoted set (PCR 10 only).
	e := *log[5]
	e.Raw = bytes.Clone(e.Raw)
	e.Raw[0] = 11
	list := [][]byte{e.Raw, e.Raw}
	covered := Covered{Start: 0, Raw: list[:1], Anchor: &Anchor{Index: 0, Values: anchor}}
	p := &PendingTrim{Count: 1, ListEntries: 2}
	_, err = decideByReplay(Options{Alg: pcr.SHA1, ReadPCRs: tp.ReadPCRs}, p, 0, covered, func() ([][]byte, error) { return list, nil })
	if !errors.Is(err, ErrAmbiguous) {
		t.Fatalf("decideByReplay with both outcomes matching = %v, want ErrAmbiguous", err)
	}
}
