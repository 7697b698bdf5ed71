package main

import (
	"path"
	"path/filepath"
	"time"

	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/imashard/imashard/pkg/shard"
	"github.com/imashard/imashard/pkg/trim"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/imashard/imashard/pkg/handoff"
)

const (
	imaCountPath  = "/sys/kernel/security/ima/runtime_measurements_count"
	imaPolicyPath = "/sys/kernel/security/ima/policy"
)

type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(s string) error { *l = append(*l, s); return nil }

func runKexec(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("kexec", "kexec --kernel FILE --initrd FILE [flags]", stderr)
	kernelPath := fs.String("kernel", "", "next kernel `file` (bzImage); required")
	initrdPath := fs.String("initrd", "", "next kernel's initrd `file` (gzip or uncompressed cpio); the shards are appended to it; required")
	cmdline := fs.String("cmdline", "", "command line of the next kernel (default: this kernel's, from /proc/cmdline)")
	appendArgs := fs.String("append", "", "text added to the end of the command line (after --cmdline or /proc/cmdline)")
	var carry stringList
	fs.Var(&carry, "carry", "`path` of a file or directory to carry to the next boot; it appears there at the same absolute path (a relative path is taken from the current directory); repeatable")
	dir := fs.String("dir", "/run/imashard", "chain `directory`: the final shard is written here and every shard in it is carried")
	sysName := fs.String("syscall", "load", "kexec system call: load (kexec_load, measures nothing) or file (kexec_file_load, for locked-down kernels)")
	akf := addTPMAKFlags(fs)
	logf := addLogFlags(fs)
	countPath := fs.String("count", imaCountPath, "IMA entry count `file`, re-read right before kexec")
	attempts := fs.Int("attempts", 3, "maximum `number` of snapshots when entries keep arriving before kexec")
	dryRun := fs.Bool("dry-run", false, "run every step except loading and rebooting; needs --output-initrd")
	outInitrd := fs.String("output-initrd", "", "with --dry-run, write the initrd that would be handed over to this `file`")
	force := fs.Bool("force", false, "execute even when entries arrived after the last snapshot (the chain will not verify; logged)")
	skipSnapshot := fs.Bool("skip-snapshot", false, "carry --dir as it is without a final snapshot; needs --force because the next boot cannot verify the entries since the last shard")
	jsonOut := fs.Bool("json", false, "print the step timings as JSON (dry run)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *kernelPath == "" || *initrdPath == "" {
		fs.Usage()
		return fmt.Errorf("%w: --kernel and --initrd are required", errUsage)
	}
	if *dryRun != (*outInitrd != "") {
		return fmt.Errorf("%w: --dry-run and --output-initrd go together", errUsage)
	}
	if *skipSnapshot && !*force {
		return fmt.Errorf("%w: --skip-snapshot leaves entries no shard covers; add --force to accept that", errUsage)
	}
	sc, err := handoff.ParseSyscall(*sysName)
	if err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	logPath, logOpts, err := logf.options()
	if err != nil {
		return err
	}

	// Every open below is measured on a system with an IMA policy, so all
	// reads happen before the snapshot.
	readStart := time.Now()
	kernel, err := readRegularFile(*kernelPath)
	if err != nil {
		return fmt.Errorf("read next kernel: %w", err)
	}
	initrd, err := readRegularFile(*initrdPath)
	if err != nil {
		return fmt.Errorf("read next initrd: %w", err)
	}
	if err := handoff.CheckKernel(kernel, sc); err != nil {
		return fmt.Errorf("next kernel %s: %w", *kernelPath, err)
	}
	carried, err := handoff.ReadCarry(carry)
	if err != nil {
		return err
	}
	readInputs := handoff.Step{Name: "read kernel, initrd and carried files", Duration: time.Since(readStart)}
	line, err := kexecCmdline(*cmdline, *appendArgs)
	if err != nil {
		return err
	}
	if sc == handoff.SyscallFile {
		warnKexecMeasureRules()
	}

	var tpmTime time.Duration
	plan := handoff.Plan{
		Kernel:      kernel,
		Initrd:      initrd,
		Cmdline:     line,
		Carry:       carried,
		Syscall:     sc,
		MaxAttempts: *attempts,
		Force:       *force,
		DryRun:      *dryRun,
		EntryCount:  func() (int64, error) { return handoff.EntryCount(*countPath) },
	}
	if *skipSnapshot {
		slog.Warn("no final snapshot: carrying the chain directory as it is because --skip-snapshot --force is set", "dir", *dir)
		plan.Snapshot = func(ctx context.Context) ([]handoff.File, int64, error) {
			n, err := handoff.EntryCount(*countPath)
			if err != nil {
				return nil, 0, err
			}
			files, err := readChainDir(*dir)
			return files, n, err
		}
	} else {
		plan.Snapshot = finalSnapshot(*dir, akf, logPath, logOpts, &tpmTime)
	}

	res, err := handoff.Run(context.Background(), plan)
	if err != nil {
		return err
	}
	res.Steps = append([]handoff.Step{readInputs}, splitSnapshotStep(res.Steps, tpmTime)...)

	if *dryRun {
		if err := writeFileAtomic(*outInitrd, res.Initrd); err != nil {
			return err
		}
		if *jsonOut {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(res)
		}
		for _, s := range res.Steps {
			fmt.Fprintf(stdout, "%-38s %v\n", s.Name, s.Duration)
		}
		fmt.Fprintf(stdout, "initrd %s: %d bytes, %d entries covered\n", *outInitrd, len(res.Initrd), res.Covered)
	}
	return nil
}

// readChainDir reads the shard files of the chain directory for the next
// boot. Other files there, such as the snapshot lock, stay behind.
func readChainDir(dir string) ([]handoff.File, error) {
	chain, err := shard.ListChain(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	files := make([]handoff.File, 0, len(chain))
	for _, c := range chain {
		data, err := os.ReadFile(c.Path)
		if err != nil {
			return nil, fmt.Errorf("read shard for the next boot: %w", err)
		}
		files = append(files, handoff.File{Path: path.Join(handoff.ShardDir, filepath.Base(c.Path)), Data: data, Mode: 0o644})
	}

	// The trim state records where a trimmed or carried list starts in the
	// history, which the next kernel needs when it keeps the list.
	st, err := trim.LoadState(dir)
	if err != nil {
		return nil, err
	}
	names := []string{}
	if _, err := os.Stat(filepath.Join(dir, trim.StateFile)); err == nil {
		names = append(names, trim.StateFile)
	}
	if st.CarryFile != "" {
		names = append(names, st.CarryFile)
	}
	for _, name := range names {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("read %s for the next boot: %w", name, err)
		}
		files = append(files, handoff.File{Path: path.Join(handoff.ShardDir, name), Data: data, Mode: 0o644})
	}
	return files, nil
}

// readRegularFile reads path and rejects devices and pipes, so that
// --kernel /dev/zero fails at once instead of reading until memory runs out.
func readRegularFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()

	info, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !info.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (mode %s): pass the image file itself", path, info.Mode())
	}
	return io.ReadAll(f)
}

func kexecCmdline(cmdline, extra string) (string, error) {
	if cmdline == "" {
		b, err := os.ReadFile("/proc/cmdline")
		if err != nil {
			return "", fmt.Errorf("read this kernel's command line (give --cmdline): %w", err)
		}
		cmdline = strings.TrimSpace(string(b))
	}
	if extra != "" {
		cmdline = strings.TrimSpace(cmdline + " " + extra)
	}
	return cmdline, nil
}

// warnKexecMeasureRules logs the policy rules that make kexec_file_load add
// entries. The entry count check before kexec catches them anyway, but this
// names the cause.
func warnKexecMeasureRules() {
	f, err := os.Open(imaPolicyPath)
	if err != nil {
		slog.Debug("cannot read the IMA policy (needs CONFIG_IMA_READ_POLICY); relying on the entry count check", "err", err)
		return
	}
	defer f.Close()
	rules, err := handoff.KexecMeasureRules(f)
	if err != nil {
		slog.Warn("reading the IMA policy failed", "path", imaPolicyPath, "err", err)
		return
	}
	for _, r := range rules {
		slog.Warn("IMA policy measures kexec_file_load, which adds entries after the snapshot; use --syscall load", "rule", r)
	}
}

// writeFileAtomic writes data to a temporary file beside path and renames
// it, so a failure never leaves a truncated file at path.
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("rename %s to %s: %w", tmp, path, err)
	}
	return nil
}

// splitSnapshotStep replaces the snapshot step with its TPM part (opening
// the TPM, loading the AK, PCR reads and quotes) and the rest (reading the
// log and writing the shard), which are the costs a user can act on
// separately.
func splitSnapshotStep(steps []handoff.Step, tpmTime time.Duration) []handoff.Step {
	var out []handoff.Step
	for _, s := range steps {
		if s.Name != "snapshot" || tpmTime == 0 || tpmTime > s.Duration {
			out = append(out, s)
			continue
		}
		out = append(out,
			handoff.Step{Name: "snapshot: TPM (AK, PCR reads, quote)", Duration: tpmTime},
			handoff.Step{Name: "snapshot: read log, write shard", Duration: s.Duration - tpmTime})
	}
	return out
}
