package trim

import (
	"fmt"
	"io"

	"github.com/imashard/imashard/pkg/imalog"
	"github.com/imashard/imashard/pkg/pcr"
	"github.com/imashard/imashard/pkg/shard"
)

// CoveredFromChain returns the entries that the shards in dir hold from
// history index from on, and the bank of their list. Every shard's quoted
// entries count, and so does every tail except the last shard's: a tail is
// quoted only by the next shard, so the last one is not anchored yet.
func CoveredFromChain(dir string, from int64) (Covered, pcr.Alg, error) {
	files, err := shard.ListChain(dir)
	if err != nil {
		return Covered{}, 0, err
	}
	covered := Covered{Start: from}
	var alg pcr.Alg
	next := int64(-1)
	for i, cf := range files {
		sf, err := shard.Open(cf.Path)
		if err != nil {
			return Covered{}, 0, err
		}
		h := sf.Header
		if next >= 0 && h.FirstIndex != next {
			sf.Close()
			return Covered{}, 0, fmt.Errorf("%w: shard %s starts at history index %d, the previous one ends at %d; run imashard verify", ErrGap, cf.Path, h.FirstIndex, next)
		}
		next = h.EndIndex()
		covered.ChainEnd = next
		if i == len(files)-1 {
			next = h.FirstIndex + h.Entries.Count
			covered.Anchor = &Anchor{Index: next, Values: h.End.Clone()}
		}
		if next <= from {
			sf.Close()
			continue
		}
		alg = h.Source.DigestAlg

		entries, err := readSection(sf.Entries(), h.Source)
		if err == nil && i < len(files)-1 {
			var tail [][]byte
			tail, err = readSection(sf.TailEntries(), h.Source)
			entries = append(entries, tail...)
		}
		sf.Close()
		if err != nil {
			return Covered{}, 0, fmt.Errorf("shard %s: %w", cf.Path, err)
		}
		for j, e := range entries {
			index := h.FirstIndex + int64(j)
			if index < from {
				continue
			}
			if len(covered.Raw) == 0 && index > from {
				return Covered{}, 0, fmt.Errorf("%w: the first shard after history index %d starts at %d", ErrGap, from, index)
			}
			covered.Raw = append(covered.Raw, e)
		}
	}
	if next >= 0 && next < from {
		// The shards end before from: nothing is covered.
		covered.Raw = nil
	}
	return covered, alg, nil
}

func readSection(r io.Reader, src shard.LogSource) ([][]byte, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	return SplitWith(ReaderOptions(src))(data)
}

// ReaderOptions returns the imalog options that parse entries as a shard's
// source list was read.
func ReaderOptions(src shard.LogSource) imalog.Options {
	order := imalog.LittleEndian
	if src.BigEndian {
		order = imalog.BigEndian
	}
	return imalog.Options{DigestAlg: src.DigestAlg, DigestSize: src.DigestSize, ByteOrder: order}
}
