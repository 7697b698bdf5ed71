package handoff

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// ErrLogMoving is returned when IMA entries kept arriving between the final
// snapshot and the moment of kexec on every attempt, so no initrd could
// carry a chain that ends where the log ends.
var ErrLogMoving = errors.New("IMA log kept growing after the final snapshot")

// Snapshot takes the final snapshot and returns the files the next boot
// needs (the shards) and the number of log entries they cover, counted from
// the first entry of this boot.
type Snapshot func(ctx context.Context) (files []File, covered int64, err error)

// Plan describes one handoff to the next kernel.
type Plan struct {
	Kernel  []byte // bzImage of the next kernel, read before the snapshot
	Initrd  []byte // the next kernel's initrd, read before the snapshot
	Cmdline string
	Carry   []File // extra files for the next boot, read before the snapshot
	Syscall Syscall

	Snapshot   Snapshot
	EntryCount func() (int64, error) // current number of entries in the log

	// MaxAttempts bounds how often a snapshot is cut again because entries
	// arrived after it. Zero means 3.
	MaxAttempts int
	// Force loads and executes even when the log moved after the last
	// snapshot, which leaves entries that no carried shard covers.
	Force bool
	// DryRun stops after building the initrd: nothing is loaded or executed.
	DryRun bool

	// load, unload and execute replace Load, Unload and Execute in tests.
	load    func(kernel, initrd []byte, cmdline string, sc Syscall) error
	unload  func(sc Syscall) error
	execute func() error
}

// Step is the duration of one step of a handoff.
type Step struct {
	Name     string        `json:"name"`
	Duration time.Duration `json:"duration_ns"`
}

// Result describes a handoff that was built (dry run) or failed to execute.
type Result struct {
	Initrd   []byte `json:"-"`
	Attempts int    `json:"attempts"`
	Covered  int64  `json:"covered_entries"`
	Steps    []Step `json:"steps"`
}

// Run snapshots, builds the next initrd and, unless DryRun is set, loads the
// next kernel and executes it. Before executing it checks that no entry
// arrived after the snapshot, because such entries would be extended into
// the PCRs that the next boot inherits while no carried shard holds them.
// On success without DryRun Run does not return.
func Run(ctx context.Context, p Plan) (_ *Result, err error) {
	if p.Snapshot == nil || p.EntryCount == nil {
		return nil, errors.New("handoff plan needs a Snapshot and an EntryCount function")
	}
	attempts := p.MaxAttempts
	if attempts <= 0 {
		attempts = 3
	}
	load, unload, execute := p.load, p.unload, p.execute
	if load == nil {
		load = Load
	}
	if unload == nil {
		unload = Unload
	}
	if execute == nil {
		execute = Execute
	}

	// A kernel left loaded after a failure would let a later `kexec -e` or a
	// systemd kexec reboot start it with shards that miss the newest entries.
	loaded := false
	defer func() {
		if err == nil || !loaded {
			return
		}
		if uerr := unload(p.Syscall); uerr != nil {
			slog.Error("unloading the kernel of the failed handoff failed; do not run kexec -e", "err", uerr)
		}
	}()

	res := &Result{}
	for attempt := 1; attempt <= attempts; attempt++ {
		res.Attempts = attempt
		if err := ctx.Err(); err != nil {
			return res, err
		}

		start := time.Now()
		shards, covered, err := p.Snapshot(ctx)
		if err != nil {
			return res, fmt.Errorf("final snapshot (attempt %d): %w", attempt, err)
		}
		res.Covered = covered
		res.Steps = append(res.Steps, Step{Name: "snapshot", Duration: time.Since(start)})

		start = time.Now()
		files := append(append([]File{}, p.Carry...), shards...)
		initrd, err := BuildInitrd(p.Initrd, files)
		if err != nil {
			return res, fmt.Errorf("build next initrd: %w", err)
		}
		res.Initrd = initrd
		res.Steps = append(res.Steps, Step{Name: "build initrd", Duration: time.Since(start)})

		if p.DryRun {
			return res, nil
		}

		start = time.Now()
		if err := load(p.Kernel, initrd, p.Cmdline, p.Syscall); err != nil {
			return res, err
		}
		loaded = true
		res.Steps = append(res.Steps, Step{Name: "load", Duration: time.Since(start)})

		now, err := p.EntryCount()
		if err != nil {
			return res, fmt.Errorf("check the log before kexec: %w", err)
		}
		if now == covered {
			slog.Info("executing next kernel", "attempt", attempt, "covered_entries", covered)
			return res, execute()
		}
		if now < covered {
			return res, fmt.Errorf("IMA log has %d entries, fewer than the %d the snapshot covers; the log was reset or the count file is wrong, not executing", now, covered)
		}
		slog.Warn("IMA entries arrived after the final snapshot; snapshotting again",
			"attempt", attempt, "covered_entries", covered, "log_entries", now)
		if attempt == attempts && p.Force {
			slog.Warn("executing with entries no shard covers because --force is set",
				"uncovered_entries", now-covered)
			return res, execute()
		}
	}
	return res, fmt.Errorf("%w: %d attempts each saw new entries between snapshot and kexec; stop the programs that run during kexec, or check the IMA policy for KEXEC_KERNEL_CHECK, KEXEC_INITRAMFS_CHECK or KEXEC_CMDLINE rules, which make kexec_file_load measure itself (use --syscall load)", ErrLogMoving, attempts)
}
