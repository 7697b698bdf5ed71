package main

import (
	"context"
	"crypto"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"

	"github.com/imashard/imashard/pkg/imalog"
	"github.com/imashard/imashard/pkg/pcr"
	"github.com/imashard/imashard/pkg/securityfs"
	"github.com/imashard/imashard/pkg/shard"
	"github.com/imashard/imashard/pkg/trim"
)

// trimResult is the trim part of `snapshot --trim` output.
type trimResult struct {
	Deleted int64 `json:"deleted"`
	// Carried counts staged entries that no shard held yet; a staged trim
	// deleted them from the kernel and saved them for the next shard.
	Carried int64 `json:"carried"`
	// CarryDropped counts entries saved by an earlier staged trim that
	// the shards now hold, so the carry file no longer keeps them.
	CarryDropped int64 `json:"carry_dropped"`
	Recovered    bool  `json:"recovered_interrupted_trim,omitempty"`
	LiveStart    int64 `json:"live_start"`
	KernelCount  int64 `json:"kernel_entries"`
}

// trimBeforeResult is the trim that `snapshot --trim` runs before the
// snapshot, which resolves an interrupted trim and deletes what earlier
// shards hold. In staged mode it carries the entries measured since the
// last shard, which the new shard then starts with.
type trimBeforeResult struct {
	Deleted      int64 `json:"deleted"`
	Carried      int64 `json:"carried"`
	CarryDropped int64 `json:"carry_dropped"`
	Recovered    bool  `json:"recovered_interrupted_trim,omitempty"`
	LiveStart    int64 `json:"live_start"`
}

// isLiveList reports whether path names a file of the kernel's securityfs,
// after cleaning, so that a path climbing out with ".." does not count.
func isLiveList(path string) bool {
	return strings.HasPrefix(filepath.Clean(path), securityfs.DefaultMountPoint+"/")
}

func trimOptions(dir, logPath string, logOpts imalog.Options, mode string) (trim.Options, error) {
	if !isLiveList(logPath) {
		return trim.Options{}, fmt.Errorf("%w: %w, not %s", errUsage, errNotLiveList, logPath)
	}
	if mode != "count" && mode != "staged" {
		return trim.Options{}, fmt.Errorf("%w: --trim-mode %q: use count or staged", errUsage, mode)
	}
	fs, err := securityfs.Open("")
	if err != nil {
		return trim.Options{}, err
	}
	if err := fs.CheckStaging(); err != nil {
		return trim.Options{}, err
	}
	// Checked before the TPM is opened, so a non-root caller learns what
	// --trim needs rather than which device it could not open.
	if err := securityfs.CheckCapSysAdmin(); err != nil {
		return trim.Options{}, fmt.Errorf("--trim: %w", err)
	}
	alg := logOpts.DigestAlg
	if alg == 0 {
		alg = pcr.SHA1
	}
	return trim.Options{Dir: dir, FS: fs, Alg: alg, Split: trim.SplitWith(logOpts), Staged: mode == "staged", LogOptions: logOpts}, nil
}

// trimCovered deletes from the kernel's list what the shards in dir hold.
// Run before a snapshot, it resolves a trim that a crash interrupted and
// finishes a trim that a crash prevented after the last shard was written.
func trimCovered(opts trim.Options) (*trim.Result, error) {
	st, err := trim.LoadState(opts.Dir)
	if err != nil {
		return nil, err
	}
	// A pending trim only moves the start forward, so the entries from
	// the recorded start on are enough either way.
	covered, alg, err := trim.CoveredFromChain(opts.Dir, st.LiveStart)
	if err != nil {
		return nil, err
	}
	if alg != 0 && alg != opts.Alg {
		return nil, fmt.Errorf("the shards hold the %s list but the trim reads the %s list: pass the same --log or --log-alg as for the snapshots", alg, opts.Alg)
	}
	return trim.Trim(opts, covered)
}

// verifyOwnQuote checks the chain, and with it the new shard's quote,
// before anything is deleted.
func verifyOwnQuote(ctx context.Context, dir string, akPublic crypto.PublicKey) error {
	report, err := shard.Verify(ctx, shard.VerifyOptions{Dir: dir, AKPublic: akPublic})
	if err != nil {
		return fmt.Errorf("verify the chain before trimming (nothing deleted): %w", err)
	}
	if !report.OK {
		return fmt.Errorf("verify the chain before trimming (nothing deleted): the report is not OK; run imashard verify --dir %s", dir)
	}
	slog.Info("chain verified before trimming", "dir", dir)
	return nil
}
