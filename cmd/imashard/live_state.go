package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/imashard/imashard/pkg/imalog"
	"github.com/imashard/imashard/pkg/securityfs"
	"github.com/imashard/imashard/pkg/shard"
	"github.com/imashard/imashard/pkg/trim"
)

// liveList is the place of the live list in the history of a chain, and
// the reader of the live part of that history.
type liveList struct {
	// first is the history index of the first entry that open returns,
	// for shard.SnapshotOptions.LiveFirstIndex and
	// shard.LiveOptions.LiveFirstIndex. Nil means the shard package's own
	// rule holds: the list was never trimmed and this boot is the one the
	// last shard was cut in.
	first *int64

	// open reads the live part of the history: entries that a staged trim
	// carried out of the kernel, then the kernel's staged list, then its
	// current list. Nil means logPath alone, on kernels without
	// CONFIG_IMA_STAGING and for lists saved to a file.
	open func() (io.ReadCloser, error)

	// carry and staged count the entries ahead of the kernel's current
	// list in what open returned when liveList ran.
	carry, staged int64
}

// currentStart returns the history index of the first entry of the
// kernel's current list, for comparisons with runtime_measurements_count.
func (l *liveList) currentStart(fallback int64) int64 {
	start := fallback
	if l.first != nil {
		start = *l.first
	}
	return start + l.carry + l.staged
}

// openLiveList returns the placement of the live list at logPath.
//
// After a trim the trim state records where the list starts. After a kexec
// the list is matched against the shards (trim.Reconcile): a carried list
// (CONFIG_IMA_KEXEC with kexec_file_load) continues where it started
// before, a fresh one starts after the shards. An existing trim state
// records the result, so the next run reads it directly.
func openLiveList(dir, logPath string, logOpts imalog.Options) (*liveList, error) {
	_, statErr := os.Stat(filepath.Join(dir, trim.StateFile))
	hasState := statErr == nil
	split := trim.SplitWith(logOpts)

	// Only the kernel's own list can have been carried, staged or
	// trimmed; a list saved to a file keeps the shard package's rule.
	live := isLiveList(logPath)
	staging := live && trim.StagedTwin(logPath) != ""

	files, err := shard.ListChain(dir)
	if err != nil || len(files) == 0 {
		if err != nil {
			return nil, err
		}
		if hasState {
			st, err := trim.LoadState(dir)
			if err != nil {
				return nil, err
			}
			if err := checkLiveStart(dir, st.KernelStart(), 0); err != nil {
				return nil, err
			}
		}
		return newLiveList(dir, nil, &trim.State{}, logPath, staging, split)
	}
	last, err := shard.Open(files[len(files)-1].Path)
	if err != nil {
		return nil, err
	}
	lastBoot := last.Header.BootID
	chainEnd := last.Header.EndIndex()
	last.Close()
	data, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return nil, fmt.Errorf("read boot ID: %w", err)
	}
	bootID := strings.TrimSpace(string(data))

	st, err := trim.LoadState(dir)
	if err != nil {
		return nil, err
	}

	// A boot is new until the state or a shard records its boot ID.
	newBoot := live && bootID != lastBoot && (!hasState || st.BootID != bootID)
	if !hasState && !newBoot {
		return newLiveList(dir, nil, st, logPath, staging, split)
	}
	if st.Pending != nil {
		return nil, fmt.Errorf("an interrupted trim is pending in %s: run `imashard snapshot --trim` on a kernel with CONFIG_IMA_STAGING to resolve it", dir)
	}
	if !newBoot {
		start := st.LiveStart
		if err := checkLiveStart(dir, start, chainEnd); err != nil {
			return nil, err
		}
		return newLiveList(dir, &start, st, logPath, staging, split)
	}

	next, err := reconcileNewBoot(dir, st, hasState, bootID, logPath, split)
	if err != nil {
		return nil, err
	}
	start := next.LiveStart
	return newLiveList(dir, &start, next, logPath, staging, split)
}

// checkLiveStart rejects a live list that starts past the end of the
// chain. Trims delete only what shards hold, so the entries in between
// were in a shard that is gone, or live-state.json was edited. Replaying
// across that hole could only fail, with an error that blames the TPM.
func checkLiveStart(dir string, start, chainEnd int64) error {
	if start <= chainEnd {
		return nil
	}
	return fmt.Errorf("%w: %s places the live list at history index %d, but the shards in %s end at %d, so entries %d to %d are in no shard and no longer in the kernel's list: restore the missing shard",
		trim.ErrGap, trim.StateFile, start, dir, chainEnd, chainEnd, start-1)
}

// newLiveList returns the placement with first as its start and, on a
// kernel with staging or with carried entries, the reader of carried,
// staged and current entries.
func newLiveList(dir string, first *int64, st *trim.State, logPath string, staging bool, split trim.SplitFunc) (*liveList, error) {
	l := &liveList{first: first}
	if !staging && st.Carry == 0 {
		return l, nil
	}
	if !staging {
		return nil, fmt.Errorf("%s names %d carried entries, but %s has no staged twin: read the list of a kernel with CONFIG_IMA_STAGING", trim.StateFile, st.Carry, logPath)
	}
	src, err := trim.NewLiveSource(dir, st, logPath, split, securityfs.DefaultRetry)
	if err != nil {
		return nil, err
	}
	staged, err := trim.CountList(trim.StagedTwin(logPath), split, securityfs.DefaultRetry)
	if err != nil {
		return nil, err
	}
	l.open, l.carry, l.staged = src.Open, src.Carry, staged
	return l, nil
}

// reconcileNewBoot places the kernel's list (staged entries first) after a
// kexec and records the placement in an existing trim state.
func reconcileNewBoot(dir string, st *trim.State, hasState bool, bootID, logPath string, split trim.SplitFunc) (*trim.State, error) {
	covered, _, err := trim.CoveredFromChain(dir, st.KernelStart())
	if err != nil {
		return nil, err
	}
	r, err := trim.OpenKernelList(logPath, securityfs.DefaultRetry)
	if err != nil {
		return nil, err
	}
	listData, err := io.ReadAll(r)
	r.Close()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", logPath, err)
	}
	list, err := split(listData)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", logPath, err)
	}
	next, outcome, err := trim.Reconcile(st, covered, list)
	if err != nil {
		return nil, err
	}
	next.BootID = bootID
	slog.Info("placed the live list in the history after a new boot", "outcome", outcome, "live_start", next.LiveStart, "carried_entries", next.Carry, "dir", dir)

	// Without a state file the first shard of this boot records the
	// placement in its header, so only an existing state is updated. That
	// keeps chains that were never trimmed free of extra files.
	if !hasState {
		return next, nil
	}
	if err := trim.SaveState(dir, next); err != nil {
		return nil, err
	}
	if st.CarryFile != "" && st.CarryFile != next.CarryFile {
		// The shards hold these entries (Reconcile checked), and the new
		// state no longer names the file.
		if err := os.Remove(filepath.Join(dir, st.CarryFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
			slog.Warn("could not remove a carry file the shards hold", "file", st.CarryFile, "err", err)
		}
	}
	return next, nil
}

// errNotLiveList reports --trim with a list that is not the kernel's.
var errNotLiveList = errors.New("--trim needs the live securityfs list")
