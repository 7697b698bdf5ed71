package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/imashard/imashard/pkg/handoff"
	"github.com/imashard/imashard/pkg/imalog"
	"github.com/imashard/imashard/pkg/shard"
)

// finalSnapshot returns the snapshot step of imashard kexec: a shard that
// ends at a fresh quote, with the entries past the quoted state as its tail,
// and every shard of the chain as files for the next boot. The count it
// returns is in this boot's live list, comparable with
// runtime_measurements_count. It adds the time spent opening the TPM,
// loading the AK, reading PCRs and quoting to *tpmTime.
func finalSnapshot(dir string, akf *tpmAKFlags, logPath string, logOpts imalog.Options, tpmTime *time.Duration) handoff.Snapshot {
	return func(ctx context.Context) ([]handoff.File, int64, error) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, 0, fmt.Errorf("create chain directory: %w", err)
		}

		// After a trim the list starts later in the history.
		list, err := openLiveList(dir, logPath, logOpts)
		if err != nil {
			return nil, 0, err
		}
		openStart := time.Now()
		t, ak, closeTPM, err := akf.open()
		*tpmTime += time.Since(openStart)
		if err != nil {
			return nil, 0, err
		}
		res, err := shard.Snapshot(ctx, shard.SnapshotOptions{
			Dir: dir, LogPath: logPath, LogOptions: logOpts, TPM: t, AK: ak, Tail: true,
			LiveFirstIndex: list.first, OpenLog: list.open,
		})
		closeTPM()
		if err != nil {
			return nil, 0, err
		}
		*tpmTime += res.TPMTime

		// The shard's indexes count from the last TPM reset; the kernel's
		// count starts at the first entry of its current list, after any
		// carried and staged entries.
		f, err := shard.Open(res.Path)
		if err != nil {
			return nil, 0, err
		}
		bootFirst := f.Header.BootFirstIndex
		f.Close()
		covered := res.FirstIndex + res.Entries + res.TailEntries - list.currentStart(bootFirst)

		files, err := readChainDir(dir)
		if err != nil {
			return nil, 0, err
		}
		return files, covered, nil
	}
}
