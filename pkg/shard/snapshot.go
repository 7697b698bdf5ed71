package shard

import (
	"bytes"
	"context"
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

// DefaultMaxAttempts bounds how often Snapshot re-reads the log and quotes
// again when measurements arrive between reading the PCRs and the quote.
const DefaultMaxAttempts = 16

// SnapshotOptions configures Snapshot.
type SnapshotOptions struct {
	Dir        string // chain directory: shards are written here, never overwritten
	LogPath    string // "" means DefaultLogPath
	LogOptions imalog.Options
	TPM        *tpm.TPM
	AK         *tpm.AK
	Banks      []pcr.Alg // nil means every allocated bank
	Tail       bool      // also record entries the log already has past the quoted state

	BootID      string // "" means the kernel's boot ID; tests set it to simulate a new boot
	MaxAttempts int    // 0 means DefaultMaxAttempts
}

// SnapshotResult describes the shard that Snapshot wrote.
type SnapshotResult struct {
	Path        string
	Sequence    uint64
	FirstIndex  int64
	Entries     int64
	TailEntries int64
	End         pcr.Values
}

// liveRead is one pass over the live list from the chain end.
type liveRead struct {
	entries []*imalog.Entry // entries from the chain end, in order
	order   imalog.ByteOrder
	offset  int64 // byte offset in the live list of entries[0]
	pcrs    []int // quotable PCR indexes the entries touch
}

// Snapshot cuts the next shard from the live log and writes it to opts.Dir.
// It reads the PCRs, finds the longest prefix of the new entries that
// replays to them, and quotes with the SHA-256 of the resulting header as
// qualifying data. When the quoted values moved past the values it read, it
// re-reads the log and tries again, up to MaxAttempts times.
func Snapshot(ctx context.Context, opts SnapshotOptions) (*SnapshotResult, error) {
	if opts.TPM == nil || opts.AK == nil {
		return nil, errors.New("snapshot: TPM and AK are required")
	}
	if opts.LogPath == "" {
		opts.LogPath = DefaultLogPath
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = DefaultMaxAttempts
	}
	if info, err := os.Stat(opts.Dir); err != nil || !info.IsDir() {
		return nil, fmt.Errorf("snapshot: chain directory %q: not a directory (create it first): %v", opts.Dir, err)
	}

	lock, err := lockDir(opts.Dir)
	if err != nil {
		return nil, err
	}
	defer lock.unlock()
	if err := removeTempFiles(opts.Dir); err != nil {
		return nil, err
	}
	crashPoint(7)

	banks := opts.Banks
	if banks == nil {
		if banks, err = opts.TPM.Banks(); err != nil {
			return nil, fmt.Errorf("snapshot: list PCR banks: %w", err)
		}
	}

	end, err := readChainEnd(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	bootID, err := readBootID(opts.BootID)
	if err != nil {
		return nil, err
	}
	s := &snapshotter{opts: opts, banks: banks, end: end, bootID: bootID}
	s.bootFirst = bootFirstIndex(end, bootID)
	s.start = s.startValues()
	slog.Info("snapshot starting", "dir", opts.Dir, "log", opts.LogPath, "first_index", s.firstIndex(), "boot_first_index", s.bootFirst)

	return s.run(ctx)
}

type snapshotter struct {
	opts      SnapshotOptions
	banks     []pcr.Alg
	end       *chainEnd
	bootID    string
	bootFirst int64
	start     pcr.Values
}

func (s *snapshotter) firstIndex() int64 {
	if s.end == nil {
		return 0
	}
	return s.end.EndIndex
}

// startValues returns the PCR values the new shard starts from: the chain's
// end, or the TPM reset state for a new chain. PCR 10 is always present.
func (s *snapshotter) startValues() pcr.Values {
	start := pcr.Values{}
	if s.end != nil {
		start = s.end.Values.Clone()
	}
	for _, alg := range s.banks {
		if _, ok := start.Get(alg, 10); !ok {
			start.Set(alg, 10, pcr.Zero(alg))
		}
	}
	return start
}

func (s *snapshotter) run(ctx context.Context) (*SnapshotResult, error) {
	indexes := quotedIndexes(s.start)
	target, err := s.opts.TPM.ReadPCRs(s.banks, indexes)
	if err != nil {
		return nil, fmt.Errorf("snapshot: read PCRs: %w", err)
	}

	for attempt := 1; attempt <= s.opts.MaxAttempts; attempt++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}

		live, err := s.readLive()
		if err != nil {
			return nil, err
		}

		// A PCR that the new entries touch for the first time starts at
		// zero and must be part of the quote, so read again with it.
		if grown := mergeIndexes(indexes, live.pcrs); len(grown) != len(indexes) {
			for _, alg := range s.banks {
				for _, index := range grown {
					if _, ok := s.start.Get(alg, index); !ok {
						s.start.Set(alg, index, pcr.Zero(alg))
					}
				}
			}
			indexes = grown
			slog.Info("new PCR indexes in the log, reading PCRs again", "indexes", indexes)
			if target, err = s.opts.TPM.ReadPCRs(s.banks, indexes); err != nil {
				return nil, fmt.Errorf("snapshot: read PCRs: %w", err)
			}
			continue
		}

		cut, rules, err := s.findCut(live, target)
		if errors.Is(err, ErrNoPrefixMatch) && attempt < s.opts.MaxAttempts {
			// The kernel appends an entry before it extends the PCR, so the
			// TPM can lag behind the chain's start (the previous tail) for
			// a moment. Read the PCRs again before giving up.
			slog.Info("no log prefix matches the PCRs yet, reading them again", "attempt", attempt, "err", err)
			time.Sleep(time.Duration(attempt) * 20 * time.Millisecond)
			if target, err = s.opts.TPM.ReadPCRs(s.banks, indexes); err != nil {
				return nil, fmt.Errorf("snapshot: read PCRs: %w", err)
			}
			continue
		}
		if err != nil {
			return nil, err
		}

		header, sections, err := s.buildHeader(live, cut, rules, target)
		if err != nil {
			return nil, err
		}
		nonce := sha256.Sum256(header)
		quote, quoted, err := s.opts.TPM.QuoteWithValues(s.opts.AK, nonce[:], s.banks, indexes)
		if err != nil {
			return nil, fmt.Errorf("snapshot: quote: %w", err)
		}
		if !quoted.Equal(target) {
			slog.Info("PCRs moved before the quote, cutting again", "attempt", attempt, "entries_read", len(live.entries))
			target = quoted
			continue
		}

		if err := s.checkReset(quote); err != nil {
			return nil, err
		}
		crashPoint(8)
		return s.write(header, sections, quote, live, cut, target)
	}
	return nil, fmt.Errorf("snapshot: PCRs kept moving during %d quotes; measurements arrive faster than a snapshot completes: retry later or raise the attempt limit", s.opts.MaxAttempts)
}

// readLive reads the live list and keeps the entries from the chain end on.
func (s *snapshotter) readLive() (*liveRead, error) {
	f, err := os.Open(s.opts.LogPath)
	if err != nil {
		return nil, fmt.Errorf("snapshot: open measurement list: %w", err)
	}
	defer f.Close()

	opts := s.opts.LogOptions
	opts.AllowTruncated = true
	reader := imalog.NewReader(f, opts)
	skip := s.firstIndex() - s.bootFirst
	live := &liveRead{}
	seen := map[int]bool{}

	for n := int64(0); ; n++ {
		e, err := reader.Next()
		if err == io.EOF {
			if n < skip {
				return nil, fmt.Errorf("snapshot: %s has %d entries in this boot but the chain in %s ends at entry %d of this boot: the log belongs to another chain or boot", s.opts.LogPath, n, s.opts.Dir, skip)
			}
			break
		}
		if err != nil {
			return nil, fmt.Errorf("snapshot: read %s: %w", s.opts.LogPath, err)
		}
		if n < skip {
			continue
		}
		if len(live.entries) == 0 {
			live.offset = e.Offset
		}
		live.entries = append(live.entries, e)
		if index := int(e.PCR); index <= maxQuotedPCR && !seen[index] {
			seen[index] = true
			live.pcrs = append(live.pcrs, index)
		}
	}
	live.order = reader.ByteOrder()
	return live, nil
}

func mergeIndexes(a, b []int) []int {
	out := slices.Concat(a, b)
	slices.Sort(out)
	return slices.Compact(out)
}

// findCut returns the longest prefix of live.entries that replays to target.
// The longest prefix keeps entries for PCRs above 23, which never change the
// TPM, in the quoted shard instead of its tail.
func (s *snapshotter) findCut(live *liveRead, target pcr.Values) (int, map[pcr.Alg]replay.Rule, error) {
	rp, err := replay.New(s.start, s.banks)
	if err != nil {
		return 0, nil, fmt.Errorf("snapshot: %w", err)
	}
	cut := -1
	var rules map[pcr.Alg]replay.Rule
	if r, ok := rp.Match(target); ok {
		cut, rules = 0, r
	}
	for i, e := range live.entries {
		if err := rp.Extend(e); err != nil {
			return 0, nil, fmt.Errorf("snapshot: entry %d at offset %d of %s: %w", s.firstIndex()-s.bootFirst+int64(i), e.Offset, s.opts.LogPath, err)
		}
		if r, ok := rp.Match(target); ok {
			cut, rules = i+1, r
		}
	}
	if cut < 0 {
		perBank, _ := rp.Candidates()
		return 0, nil, fmt.Errorf("snapshot: %w: none of the %d entries after history index %d reaches the TPM's PCRs (%v): the log and TPM disagree, or the chain in %s belongs to another TPM or boot",
			ErrNoPrefixMatch, len(live.entries), s.firstIndex(), target.Diff(perBank), s.opts.Dir)
	}
	return cut, rules, nil
}

type sections struct {
	entries, tail []byte
}

func (s *snapshotter) buildHeader(live *liveRead, cut int, rules map[pcr.Alg]replay.Rule, target pcr.Values) ([]byte, sections, error) {
	var sec sections
	for _, e := range live.entries[:cut] {
		sec.entries = append(sec.entries, e.Raw...)
	}
	tailCount := 0
	if s.opts.Tail {
		tailCount = len(live.entries) - cut
		for _, e := range live.entries[cut:] {
			sec.tail = append(sec.tail, e.Raw...)
		}
	}
	entriesSum := sha256.Sum256(sec.entries)
	tailSum := sha256.Sum256(sec.tail)

	source := sourceFor(s.opts.LogPath, s.opts.LogOptions, live.order)
	if s.end != nil && s.end.Source != source && s.end.BootID == s.bootID {
		return nil, sec, fmt.Errorf("snapshot: %s is read as %+v but the chain's last shard %s was read as %+v: use the same --log and format options", s.opts.LogPath, source, s.end.File, s.end.Source)
	}

	h := &Header{
		Version:        FormatVersion,
		FirstIndex:     s.firstIndex(),
		Entries:        Section{Count: int64(cut), Size: int64(len(sec.entries)), Digest: entriesSum[:]},
		Tail:           Section{Count: int64(tailCount), Size: int64(len(sec.tail)), Digest: tailSum[:]},
		Source:         source,
		Start:          quotedValues(s.start),
		End:            target.Clone(),
		Rules:          rulesToNames(rules),
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
		return nil, sec, fmt.Errorf("snapshot: %w", err)
	}
	return data, sec, nil
}

// checkReset rejects a quote from a TPM that was reset since the chain's last
// shard: its PCRs started again from zero, so the chain cannot continue.
func (s *snapshotter) checkReset(quote *tpm.Quote) error {
	if s.end == nil {
		return nil
	}
	info, err := tpm.ParseQuote(quote)
	if err != nil {
		return fmt.Errorf("snapshot: parse own quote: %w", err)
	}
	if info.ResetCount != s.end.ResetCount {
		return fmt.Errorf("snapshot: %w: TPM resetCount is %d, the chain's last shard %s was quoted at %d: start a new chain in an empty directory", ErrResetDetected, info.ResetCount, s.end.File, s.end.ResetCount)
	}
	return nil
}

func (s *snapshotter) write(header []byte, sec sections, quote *tpm.Quote, live *liveRead, cut int, end pcr.Values) (*SnapshotResult, error) {
	trailer, err := MarshalTrailer(Trailer{Attest: quote.Attest, Signature: quote.Signature})
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	seq := uint64(0)
	if s.end != nil {
		seq = s.end.Sequence + 1
	}
	path, err := writeShard(s.opts.Dir, seq, header, sec.entries, sec.tail, trailer)
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}

	res := &SnapshotResult{
		Path:       path,
		Sequence:   seq,
		FirstIndex: s.firstIndex(),
		Entries:    int64(cut),
		End:        end,
	}
	if s.opts.Tail {
		res.TailEntries = int64(len(live.entries) - cut)
	}
	slog.Info("snapshot written", "path", path, "sequence", seq, "first_index", res.FirstIndex, "entries", res.Entries, "tail", res.TailEntries, "pending", len(live.entries)-cut-int(res.TailEntries))
	return res, nil
}
