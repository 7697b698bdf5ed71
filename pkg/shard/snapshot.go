package shard

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/imashard/imashard/pkg/imalog"
	"github.com/imashard/imashard/pkg/pcr"
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
	Banks      []pcr.Alg // nil means every allocated bank whose hash this build computes (not SM3)
	Tail       bool      // also record entries the log already has past the quoted state

	BootID      string // "" means the kernel's boot ID; tests set it to simulate a new boot
	MaxAttempts int    // 0 means DefaultMaxAttempts

	// LiveFirstIndex is the history index of LogPath's first entry. Nil
	// derives it from the boot ID, which is right only for a list that was
	// never trimmed. After a trim, pkg/trim's state file records it.
	LiveFirstIndex *int64

	// OpenLog, when set, opens the list in place of LogPath, which then
	// only names the list's source in the header. pkg/trim's LiveSource
	// uses it to put carried and staged entries ahead of the kernel's
	// current list. Every call must return the same entries, possibly
	// followed by more.
	OpenLog func() (io.ReadCloser, error)
	// Lock is the chain directory's lock when the caller already holds
	// it (LockChain); nil makes Snapshot take and release it.
	Lock *ChainLock
}

// openLog opens the list that the snapshot reads.
func (o *SnapshotOptions) openLog() (io.ReadCloser, error) {
	if o.OpenLog != nil {
		return o.OpenLog()
	}
	return openList(o.LogPath)
}

// SnapshotResult describes the shard that Snapshot wrote.
type SnapshotResult struct {
	Path        string
	Sequence    uint64
	FirstIndex  int64
	Entries     int64
	TailEntries int64
	End         pcr.Values
	// BootFirstIndex is the history index of the first entry of this boot's
	// list, so FirstIndex+Entries+TailEntries-BootFirstIndex entries of the
	// live list are in the chain.
	BootFirstIndex int64
	// TPMTime is the time spent in TPM commands (PCR reads and the quote),
	// so callers can tell it apart from reading the log and writing files.
	TPMTime time.Duration
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
	list, err := opts.openLog()
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	list.Close()
	info, err := os.Stat(opts.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("snapshot: chain directory %q does not exist: create it first", opts.Dir)
	}
	if err != nil {
		return nil, fmt.Errorf("snapshot: chain directory: %w", err)
	}
	if !info.IsDir() {
		return nil, fmt.Errorf("snapshot: chain directory %q is not a directory (mode %s)", opts.Dir, info.Mode())
	}

	switch {
	case opts.Lock == nil:
		lock, err := lockDir(opts.Dir)
		if err != nil {
			return nil, err
		}
		defer lock.unlock()
	case filepath.Clean(opts.Lock.dir) != filepath.Clean(opts.Dir):
		return nil, fmt.Errorf("snapshot: the lock held is for %s, not for the chain directory %s", opts.Lock.dir, opts.Dir)
	}
	if err := removeTempFiles(opts.Dir); err != nil {
		return nil, err
	}
	crashPoint(7)

	banks := opts.Banks
	if banks == nil {
		if banks, err = replayableBanks(opts.TPM); err != nil {
			return nil, err
		}
	}

	end, err := readChainEnd(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	if end != nil {
		if err := end.checkQuote(opts.AK.PublicKey); err != nil {
			return nil, fmt.Errorf("snapshot: a new shard would extend a chain that cannot verify: %w: run imashard verify on %s, and move the chain aside to start a new one", err, opts.Dir)
		}
	}
	bootID, err := readBootID(opts.BootID)
	if err != nil {
		return nil, err
	}
	s := &snapshotter{opts: opts, banks: banks, end: end, bootID: bootID}
	s.bootFirst = bootFirstIndex(end, bootID)
	if opts.LiveFirstIndex != nil {
		s.bootFirst = *opts.LiveFirstIndex
	}
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
	tpmTime   time.Duration
}

// readPCRs reads the PCRs and adds the time to tpmTime.
func (s *snapshotter) readPCRs(indexes []int) (pcr.Values, error) {
	start := time.Now()
	values, err := s.opts.TPM.ReadPCRs(s.banks, indexes)
	s.tpmTime += time.Since(start)
	return values, err
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
	target, err := s.readPCRs(indexes)
	if err != nil {
		return nil, fmt.Errorf("snapshot: read PCRs: %w", err)
	}

	for attempt := 1; attempt <= s.opts.MaxAttempts; attempt++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}

		scan, err := s.scanLive(target)
		if err != nil {
			return nil, err
		}

		// A PCR that the new entries touch for the first time starts at
		// zero and must be part of the quote, so read again with it.
		if grown := mergeIndexes(indexes, scan.pcrs); len(grown) != len(indexes) {
			for _, alg := range s.banks {
				for _, index := range grown {
					if _, ok := s.start.Get(alg, index); !ok {
						s.start.Set(alg, index, pcr.Zero(alg))
					}
				}
			}
			indexes = grown
			slog.Info("new PCR indexes in the log, reading PCRs again", "indexes", indexes)
			if target, err = s.readPCRs(indexes); err != nil {
				return nil, fmt.Errorf("snapshot: read PCRs: %w", err)
			}
			continue
		}

		if scan.noMatch != nil && attempt < s.opts.MaxAttempts {
			// The kernel appends an entry before it extends the PCR, so the
			// TPM can lag behind the chain's start (the previous tail) for
			// a moment. Read the PCRs again before giving up.
			slog.Info("no log prefix matches the PCRs yet, reading them again", "attempt", attempt, "err", scan.noMatch)
			time.Sleep(time.Duration(attempt) * 20 * time.Millisecond)
			if target, err = s.readPCRs(indexes); err != nil {
				return nil, fmt.Errorf("snapshot: read PCRs: %w", err)
			}
			continue
		}
		if scan.noMatch != nil {
			return nil, scan.noMatch
		}

		res, moved, err := s.quoteAndWrite(scan, target, indexes)
		if err != nil || !moved {
			return res, err
		}
		// Measurements often come in bursts (a program starting, a
		// directory walked): back off a little more each time, so that
		// the attempts outlast a burst instead of all falling inside it.
		slog.Info("PCRs moved before the quote, cutting again", "attempt", attempt, "entries_read", scan.count)
		time.Sleep(time.Duration(attempt) * 20 * time.Millisecond)
		if target, err = s.readPCRs(indexes); err != nil {
			return nil, fmt.Errorf("snapshot: read PCRs: %w", err)
		}
	}
	return nil, fmt.Errorf("snapshot: the IMA log kept moving: no stable cut after %d attempts, because measurements arrive faster than a snapshot completes: retry later or raise MaxAttempts", s.opts.MaxAttempts)
}

// checkReset rejects a quote from a TPM that was reset since the chain's last
// shard: its PCRs started again from zero, so the chain cannot continue.
func (s *snapshotter) checkReset(info *tpm.QuoteInfo) error {
	if s.end == nil {
		return nil
	}
	if info.ResetCount != s.end.ResetCount {
		return fmt.Errorf("snapshot: %w: TPM resetCount is %d, the chain's last shard %s was quoted at %d: start a new chain in an empty directory", ErrResetDetected, info.ResetCount, s.end.File, s.end.ResetCount)
	}
	return nil
}

// replayableBanks returns the allocated banks whose hash this build can
// compute. Other banks, such as SM3 on some TPMs, are left out of the shard
// and logged, because no replay could check them.
func replayableBanks(t *tpm.TPM) ([]pcr.Alg, error) {
	allocated, err := t.Banks()
	if err != nil {
		return nil, fmt.Errorf("snapshot: list PCR banks: %w", err)
	}
	var banks []pcr.Alg
	for _, alg := range allocated {
		if _, err := alg.New(); err != nil {
			slog.Warn("leaving a PCR bank out of the shard because its hash is not supported", "bank", alg.String(), "err", err)
			continue
		}
		banks = append(banks, alg)
	}
	if len(banks) == 0 {
		return nil, fmt.Errorf("snapshot: none of the allocated PCR banks %v can be replayed: allocate a sha1, sha256, sha384 or sha512 bank", allocated)
	}
	return banks, nil
}
