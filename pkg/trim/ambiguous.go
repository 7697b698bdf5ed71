package trim

import (
	"bytes"
	"fmt"
	"log/slog"
	"slices"

	"github.com/imashard/imashard/pkg/imalog"
	"github.com/imashard/imashard/pkg/pcr"
	"github.com/imashard/imashard/pkg/replay"
)

// Anchor is a point of the history whose PCR values a quote vouches for:
// the end of the last shard's quoted entries.
type Anchor struct {
	Index  int64      // history index of the first entry after the quoted state
	Values pcr.Values // the quoted PCR values
}

// PCRReader reads the current values of the given PCRs from the TPM.
type PCRReader func(banks []pcr.Alg, indexes []int) (pcr.Values, error)

// replayAttempts bounds how often decideByReplay reads the PCRs again
// when the list grows or the PCRs lag behind it.
const replayAttempts = 5

// decideByReplay decides an interrupted count trim whose outcome the list
// cannot show, because the list starts with the same entries either way
// (the kernel adds every violation, so violation entries can repeat byte
// for byte). Under each outcome the list starts at another history
// index, so the two candidate histories (shards, then list) extend a
// different number of entries into the PCRs after the anchor. It reads
// the PCRs between two reads of the list that return the same entries,
// so the PCRs hold the extends of exactly that list, and returns whether
// the trim deleted its entries when exactly one candidate replays to
// them.
func decideByReplay(opts Options, p *PendingTrim, kernelStart int64, covered Covered, readList func() ([][]byte, error)) (bool, error) {
	if opts.ReadPCRs == nil || covered.Anchor == nil {
		return false, fmt.Errorf("%w: the list starts with the same %d entries either way, and deciding by replay needs the TPM and a shard (run `imashard snapshot --trim`, which has both)", ErrAmbiguous, p.Count)
	}
	anchor := covered.Anchor
	banks := anchor.Values.Banks()
	var indexes []int
	for _, alg := range banks {
		for _, index := range anchor.Values.Indexes(alg) {
			if index <= maxQuotedPCR {
				indexes = append(indexes, index)
			}
		}
	}
	slices.Sort(indexes)
	indexes = slices.Compact(indexes)
	logOpts := opts.LogOptions
	if logOpts.DigestAlg == 0 {
		logOpts.DigestAlg = opts.Alg
	}

	var notDeleted, deleted bool
	for attempt := 1; attempt <= replayAttempts; attempt++ {
		list, target, err := readStable(opts.ReadPCRs, banks, indexes, readList)
		if err != nil {
			return false, err
		}
		if list == nil {
			slog.Info("trim: the list grew while the PCRs were read; reading again", "attempt", attempt)
			continue
		}
		if notDeleted, err = replaysTo(anchor, target, covered, kernelStart, list, logOpts); err != nil {
			return false, err
		}
		if deleted, err = replaysTo(anchor, target, covered, kernelStart+p.Count, list, logOpts); err != nil {
			return false, err
		}
		slog.Info("trim: replayed both outcomes of an interrupted trim to the TPM's PCRs", "count", p.Count, "attempt", attempt, "not_deleted_matches", notDeleted, "deleted_matches", deleted)
		if notDeleted != deleted {
			return deleted, nil
		}
		if deleted {
			return false, fmt.Errorf("%w: both outcomes of an interrupted trim of %d entries replay to the TPM's PCRs (the entries in question extend no quoted PCR)", ErrAmbiguous, p.Count)
		}
		// Neither matched: the kernel appends an entry before it extends
		// the PCR, so the PCRs may lag the list for a moment.
	}
	return false, fmt.Errorf("%w: neither outcome of an interrupted trim of %d entries replays to the TPM's PCRs after %d attempts; run `imashard verify --live`", ErrAmbiguous, p.Count, replayAttempts)
}

// maxQuotedPCR is the highest PCR index a TPM quote covers.
const maxQuotedPCR = 23

// readStable reads the list, the PCRs, and the list again. It returns the
// list and the PCRs when both list reads returned the same number of
// entries, and a nil list when the list grew in between.
func readStable(read PCRReader, banks []pcr.Alg, indexes []int, readList func() ([][]byte, error)) ([][]byte, pcr.Values, error) {
	before, err := readList()
	if err != nil {
		return nil, nil, err
	}
	target, err := read(banks, indexes)
	if err != nil {
		return nil, nil, fmt.Errorf("decide an interrupted trim by replay: read PCRs: %w", err)
	}
	after, err := readList()
	if err != nil {
		return nil, nil, err
	}
	if len(after) != len(before) {
		return nil, nil, nil
	}
	return before, target, nil
}

// replaysTo reports whether the history that places list[0] at history
// index listStart replays from the anchor to target once the whole list
// is extended. Entries between the anchor and listStart come from covered.
func replaysTo(anchor *Anchor, target pcr.Values, covered Covered, listStart int64, list [][]byte, logOpts imalog.Options) (bool, error) {
	rp, err := replay.New(anchor.Values, anchor.Values.Banks())
	if err != nil {
		return false, err
	}
	extend := func(raw []byte, index int64) error {
		e, err := imalog.NewReader(bytes.NewReader(raw), logOpts).Next()
		if err != nil {
			return fmt.Errorf("parse the entry at history index %d: %w", index, err)
		}
		return rp.Extend(e)
	}

	for index := anchor.Index; index < listStart; index++ {
		raw, ok := covered.at(index)
		if !ok {
			// This candidate needs an entry that neither the shards nor the
			// list holds, so it cannot be the history.
			return false, nil
		}
		if err := extend(raw, index); err != nil {
			return false, err
		}
	}
	skip := max(anchor.Index-listStart, 0)
	for i := skip; i < int64(len(list)); i++ {
		if err := extend(list[i], listStart+i); err != nil {
			return false, err
		}
	}
	_, ok := rp.Match(target)
	return ok, nil
}
