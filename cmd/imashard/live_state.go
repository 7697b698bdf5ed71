package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/imashard/imashard/pkg/imalog"
	"github.com/imashard/imashard/pkg/securityfs"
	"github.com/imashard/imashard/pkg/shard"
	"github.com/imashard/imashard/pkg/trim"
)

// liveFirstIndex returns the history index of the first entry of the live
// list at logPath, for shard.SnapshotOptions.LiveFirstIndex and
// shard.LiveOptions.LiveFirstIndex. It returns nil when the shard package's
// own rule holds: the list was never trimmed and this boot is the one the
// last shard was cut in.
//
// After a trim the trim state records the index. After a kexec the list is
// matched against the shards (trim.Reconcile): a carried list
// (CONFIG_IMA_KEXEC with kexec_file_load) continues where it started
// before, a fresh one starts after the shards. An existing trim state
// records the result, so the next run reads it directly.
func liveFirstIndex(dir, logPath string, logOpts imalog.Options) (*int64, error) {
	_, statErr := os.Stat(filepath.Join(dir, trim.StateFile))
	hasState := statErr == nil

	files, err := shard.ListChain(dir)
	if err != nil || len(files) == 0 {
		return nil, err
	}
	last, err := shard.Open(files[len(files)-1].Path)
	if err != nil {
		return nil, err
	}
	lastBoot := last.Header.BootID
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

	// Only the kernel's own list can have been carried or trimmed; a list
	// saved to a file keeps the shard package's rule. A boot is new until
	// the state or a shard records its boot ID.
	live := strings.HasPrefix(logPath, securityfs.DefaultMountPoint+"/")
	newBoot := live && bootID != lastBoot && (!hasState || st.BootID != bootID)
	if !hasState && !newBoot {
		return nil, nil
	}
	if st.Pending != nil {
		return nil, fmt.Errorf("an interrupted trim is pending in %s: run `imashard snapshot --trim` on a kernel with CONFIG_IMA_STAGING to resolve it", dir)
	}
	if st.Carry > 0 {
		// TODO: snapshot reads the kernel's list only; carried entries of a
		// staged trim must be fed to it first.
		return nil, fmt.Errorf("%d staged entries were carried out of the kernel by a staged trim and no snapshot reads them yet: use --trim-mode count", st.Carry)
	}
	if !newBoot {
		start := st.KernelStart()
		return &start, nil
	}

	covered, _, err := trim.CoveredFromChain(dir, st.KernelStart())
	if err != nil {
		return nil, err
	}
	listData, err := os.ReadFile(logPath)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", logPath, err)
	}
	list, err := trim.SplitWith(logOpts)(listData)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", logPath, err)
	}
	next, outcome, err := trim.Reconcile(st, covered, list)
	if err != nil {
		return nil, err
	}
	next.BootID = bootID
	slog.Info("placed the live list in the history after a new boot", "outcome", outcome, "live_start", next.LiveStart, "dir", dir)

	// Without a state file the first shard of this boot records the
	// placement in its header, so only an existing state is updated. That
	// keeps chains that were never trimmed free of extra files.
	if hasState {
		if err := trim.SaveState(dir, next); err != nil {
			return nil, err
		}
	}
	start := next.KernelStart()
	return &start, nil
}

// errNotLiveList reports --trim with a list that is not the kernel's.
var errNotLiveList = errors.New("--trim needs the live securityfs list")
