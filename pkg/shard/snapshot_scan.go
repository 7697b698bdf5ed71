package shard

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"time"

	"github.com/imashard/imashard/pkg/imalog"
	"github.com/imashard/imashard/pkg/pcr"
	"github.com/imashard/imashard/pkg/replay"
	"github.com/imashard/imashard/pkg/tpm"
)

// liveScan is one streaming pass over the live list from the chain's end.
// It keeps byte offsets instead of entries, so a snapshot's memory does not
// grow with the number of new entries. The list only grows, so a second
// read of the same byte range returns the same entries.
type liveScan struct {
	order       imalog.ByteOrder
	pcrs        []int // quotable PCR indexes the new entries touch
	count       int64 // new entries read
	startOffset int64 // list offset of the first new entry
	endOffset   int64 // list offset after the last complete new entry

	cut       int64 // longest prefix of the new entries that replays to the target; -1 for none
	cutOffset int64
	rules     map[pcr.Alg]replay.Rule
	noMatch   error // set when no prefix replays to the target
}

// scanLive reads the live list, checks that the previous shard's tail
// reappears right before the new entries, and replays the new entries to
// find the longest prefix that reaches target. The longest prefix keeps
// entries for PCRs above 23, which never change the TPM, in the quoted shard
// instead of its tail.
func (s *snapshotter) scanLive(target pcr.Values) (*liveScan, error) {
	f, err := s.opts.openLog()
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	defer f.Close()

	opts := s.opts.LogOptions
	opts.AllowTruncated = true
	reader := imalog.NewReader(f, opts)
	skip := s.firstIndex() - s.bootFirst

	rp, err := replay.New(s.start, s.banks)
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	scan := &liveScan{cut: -1}
	match := func(offset int64) {
		if r, ok := rp.Match(target); ok {
			scan.cut, scan.cutOffset, scan.rules = scan.count, offset, r
		}
	}
	seen := map[int]bool{}

	tailStart := int64(-1)
	tailHash := sha256.New()
	if s.end != nil && s.end.Tail.Count > 0 && skip >= s.end.Tail.Count {
		tailStart = skip - s.end.Tail.Count
	}

	for n := int64(0); ; n++ {
		e, err := reader.Next()
		if err != nil && err != io.EOF {
			return nil, fmt.Errorf("snapshot: read %s: %w", s.opts.LogPath, err)
		}
		if n == skip {
			if tailStart >= 0 && !bytes.Equal(tailHash.Sum(nil), s.end.Tail.Digest) {
				return nil, fmt.Errorf("snapshot: %w: entries %d to %d of %s differ from the tail of %s: the log belongs to another chain or boot", ErrReplayMismatch, tailStart, skip-1, s.opts.LogPath, s.end.File)
			}
			scan.startOffset = reader.Offset()
			if e != nil {
				scan.startOffset = e.Offset
			}
			match(scan.startOffset)
		}
		if err == io.EOF {
			if n < skip {
				return nil, fmt.Errorf("snapshot: %s has %d entries in this boot but the chain in %s ends at entry %d of this boot: the log belongs to another chain or boot", s.opts.LogPath, n, s.opts.Dir, skip)
			}
			break
		}
		if n < skip {
			if tailStart >= 0 && n >= tailStart {
				tailHash.Write(e.Raw)
			}
			continue
		}

		if err := rp.Extend(e); err != nil {
			return nil, fmt.Errorf("snapshot: entry %d at offset %d of %s: %w", n, e.Offset, s.opts.LogPath, err)
		}
		scan.count++
		match(e.Offset + int64(len(e.Raw)))
		if index := int(e.PCR); index <= maxQuotedPCR && !seen[index] {
			seen[index] = true
			scan.pcrs = append(scan.pcrs, index)
		}
	}
	scan.order = reader.ByteOrder()
	scan.endOffset = reader.Offset()

	if scan.cut < 0 {
		perBank, _ := rp.Candidates()
		scan.noMatch = fmt.Errorf("snapshot: %w: none of the %d entries after history index %d reaches the TPM's PCRs (%v): the log and TPM disagree, or the chain in %s belongs to another TPM or boot",
			ErrNoPrefixMatch, scan.count, s.firstIndex(), target.Diff(perBank), s.opts.Dir)
	}
	return scan, nil
}

func mergeIndexes(a, b []int) []int {
	out := slices.Concat(a, b)
	slices.Sort(out)
	return slices.Compact(out)
}

// spool is a temporary file in the chain directory that holds the new
// shard's entry and tail sections. A leftover spool file is removed like
// other temporary shard files.
type spool struct {
	file    *os.File
	entries Section
	tail    Section
}

// spool copies the entry and tail sections of the new shard from the live
// list into a spool file, hashing and counting them on the way.
func (s *snapshotter) spool(scan *liveScan) (*spool, error) {
	tailEnd := scan.cutOffset
	if s.opts.Tail {
		tailEnd = scan.endOffset
	}

	f, err := s.opts.openLog()
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	defer f.Close()
	if _, err := io.CopyN(io.Discard, f, scan.startOffset); err != nil {
		return nil, fmt.Errorf("snapshot: skip to offset %d of %s: %w", scan.startOffset, s.opts.LogPath, err)
	}

	tmp, err := os.CreateTemp(s.opts.Dir, tempPrefix+"spool-*"+tempSuffix)
	if err != nil {
		return nil, fmt.Errorf("snapshot: create spool file: %w", err)
	}
	sp := &spool{file: tmp}
	sp.entries, err = s.copySection(f, tmp, scan.cutOffset-scan.startOffset, scan.order)
	if err == nil {
		sp.tail, err = s.copySection(f, tmp, tailEnd-scan.cutOffset, scan.order)
	}
	if err != nil {
		sp.remove()
		return nil, err
	}

	wantTail := int64(0)
	if s.opts.Tail {
		wantTail = scan.count - scan.cut
	}
	if sp.entries.Count != scan.cut || sp.tail.Count != wantTail {
		sp.remove()
		return nil, fmt.Errorf("snapshot: %s changed while it was read: %d entries and %d tail entries on the second read, %d and %d on the first: the list must only grow", s.opts.LogPath, sp.entries.Count, sp.tail.Count, scan.cut, wantTail)
	}
	return sp, nil
}

// copySection copies size bytes of entries from r to w and returns their
// count and SHA-256.
func (s *snapshotter) copySection(r io.Reader, w io.Writer, size int64, order imalog.ByteOrder) (Section, error) {
	h := sha256.New()
	limited := io.TeeReader(io.LimitReader(r, size), io.MultiWriter(w, h))
	opts := s.opts.LogOptions
	opts.ByteOrder = order
	reader := imalog.NewReader(limited, opts)
	var count int64
	for {
		_, err := reader.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return Section{}, fmt.Errorf("snapshot: second read of %s: %w", s.opts.LogPath, err)
		}
		count++
	}
	if reader.Offset() != size {
		return Section{}, fmt.Errorf("snapshot: second read of %s returned %d of %d bytes", s.opts.LogPath, reader.Offset(), size)
	}
	return Section{Count: count, Size: size, Digest: h.Sum(nil)}, nil
}

func (sp *spool) remove() {
	name := sp.file.Name()
	sp.file.Close()
	if err := os.Remove(name); err != nil {
		slog.Warn("remove spool file", "path", name, "err", err)
	}
}

// quoteAndWrite builds the header for the cut in scan, quotes it and writes
// the shard. When the quote covers other values than target, because the
// PCRs moved, it writes nothing and reports moved, so the caller cuts again.
func (s *snapshotter) quoteAndWrite(scan *liveScan, target pcr.Values, indexes []int) (res *SnapshotResult, moved bool, err error) {
	sp, err := s.spool(scan)
	if err != nil {
		return nil, false, err
	}
	defer sp.remove()

	header, err := s.buildHeader(scan, sp, target)
	if err != nil {
		return nil, false, err
	}
	// The quote is checked against the header's end values directly
	// instead of reading the PCRs around it: that only needs the PCRs to
	// hold still until the quote, which matters when the kernel measures
	// continuously.
	nonce := sha256.Sum256(header)
	quoteStart := time.Now()
	quote, err := s.opts.TPM.Quote(s.opts.AK, nonce[:], s.banks, indexes)
	s.tpmTime += time.Since(quoteStart)
	if err != nil {
		return nil, false, fmt.Errorf("snapshot: quote: %w", err)
	}
	info, err := tpm.VerifyQuote(s.opts.AK.PublicKey, quote, nonce[:], target)
	if errors.Is(err, tpm.ErrPCRDigestMismatch) {
		return nil, true, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("snapshot: check own quote: %w", err)
	}
	if err := s.checkReset(info); err != nil {
		return nil, false, err
	}
	crashPoint(8)

	trailer, err := MarshalTrailer(Trailer{Attest: quote.Attest, Signature: quote.Signature})
	if err != nil {
		return nil, false, fmt.Errorf("snapshot: %w", err)
	}
	seq := uint64(0)
	if s.end != nil {
		seq = s.end.Sequence + 1
	}
	sections := io.NewSectionReader(sp.file, 0, sp.entries.Size+sp.tail.Size)
	path, err := writeShardFrom(s.opts.Dir, seq, bytes.NewReader(header), sections, bytes.NewReader(trailer))
	if err != nil {
		return nil, false, fmt.Errorf("snapshot: %w", err)
	}

	res = &SnapshotResult{
		Path:           path,
		Sequence:       seq,
		FirstIndex:     s.firstIndex(),
		Entries:        sp.entries.Count,
		TailEntries:    sp.tail.Count,
		End:            target,
		BootFirstIndex: s.bootFirst,
		TPMTime:        s.tpmTime,
	}
	slog.Info("snapshot written", "path", path, "sequence", seq, "first_index", res.FirstIndex, "entries", res.Entries, "tail", res.TailEntries, "pending", scan.count-res.Entries-res.TailEntries)
	return res, false, nil
}

func (s *snapshotter) buildHeader(scan *liveScan, sp *spool, target pcr.Values) ([]byte, error) {
	source := sourceFor(s.opts.LogPath, s.opts.LogOptions, scan.order)
	if s.end != nil && s.end.Source != source && s.end.BootID == s.bootID {
		return nil, fmt.Errorf("snapshot: %s is read as %+v but the chain's last shard %s was read as %+v: use the same --log and format options", s.opts.LogPath, source, s.end.File, s.end.Source)
	}

	h := &Header{
		Version:        FormatVersion,
		FirstIndex:     s.firstIndex(),
		Entries:        sp.entries,
		Tail:           sp.tail,
		Source:         source,
		Start:          quotedValues(s.start),
		End:            target.Clone(),
		Rules:          rulesToNames(scan.rules),
		AKPublic:       s.opts.AK.Public,
		BootID:         s.bootID,
		BootFirstIndex: s.bootFirst,
	}
	if s.end != nil {
		h.Sequence = s.end.Sequence + 1
		h.Previous = bytes.Clone(s.end.Digest)
	}
	data, err := MarshalHeader(h)
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	return data, nil
}
