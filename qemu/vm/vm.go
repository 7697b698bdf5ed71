// Package vm boots a Linux kernel in QEMU with a TPM 2.0 emulated by swtpm,
// captures the serial console, and extracts the results that the guest
// prints between markers. Tests and the demo use it to run scenarios on
// real kernels with any kernel image and initramfs.
package vm

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/imashard/imashard/pkg/handoff"
)

// DefaultAppend is the kernel command line of every boot. ima_policy=tcb
// measures executed programs and files read by root; rootfstype=ramfs keeps
// the initramfs out of tmpfs, which the tcb policy does not measure.
const DefaultAppend = "console=ttyS0 panic=-1 ima_policy=tcb rootfstype=ramfs"

// KVMEnv is the environment variable that opts in to KVM acceleration when
// set to 1. TCG is the default because KVM is not available everywhere.
const KVMEnv = "IMASHARD_QEMU_KVM"

// ErrTimeout is returned when the guest did not power off in time.
var ErrTimeout = errors.New("QEMU guest timed out")

// Config describes one QEMU run, which may span several kexec boots.
type Config struct {
	Kernel string // bzImage path
	Initrd string // initramfs path
	// Overlay files are appended to the initrd as a second cpio archive.
	Overlay []handoff.File
	// Append is added to DefaultAppend.
	Append string
	// StateDir holds swtpm's state and sockets. Reusing it across runs keeps
	// the TPM's keys; it must exist.
	StateDir string
	// WorkDir receives the console log and the built initrd; it must exist.
	WorkDir string
	// Timeout bounds the whole run; zero means 5 minutes.
	Timeout time.Duration
	// MemoryMB is the guest memory; zero means 1024.
	MemoryMB int
}

// Result is the output of a finished run.
type Result struct {
	Console     string // the whole serial console output
	ConsolePath string
	Duration    time.Duration
}

// Run starts swtpm and QEMU, waits until the guest powers off or the
// timeout passes, and stops both processes by PID on every path.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Minute
	}
	if cfg.MemoryMB == 0 {
		cfg.MemoryMB = 1024
	}
	for _, tool := range []string{"swtpm", "qemu-system-x86_64"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s not found on PATH: install it (make deps): %w", tool, err)
		}
	}

	initrd, err := os.ReadFile(cfg.Initrd)
	if err != nil {
		return nil, fmt.Errorf("read initramfs: %w", err)
	}
	if len(cfg.Overlay) > 0 {
		initrd, err = handoff.BuildInitrd(initrd, cfg.Overlay)
		if err != nil {
			return nil, fmt.Errorf("build initrd with overlay: %w", err)
		}
	}
	initrdPath := filepath.Join(cfg.WorkDir, "initrd.img")
	if err := os.WriteFile(initrdPath, initrd, 0o644); err != nil {
		return nil, fmt.Errorf("write initrd: %w", err)
	}

	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	start := time.Now()

	tpmSock := filepath.Join(cfg.StateDir, "swtpm.sock")
	os.Remove(tpmSock)
	swtpmLog := filepath.Join(cfg.WorkDir, "swtpm.log")
	swtpm := exec.Command("swtpm", "socket", "--tpm2",
		"--tpmstate", "dir="+cfg.StateDir,
		"--ctrl", "type=unixio,path="+tpmSock,
		"--log", "file="+swtpmLog+",level=1",
		"--terminate")
	if err := swtpm.Start(); err != nil {
		return nil, fmt.Errorf("start swtpm: %w", err)
	}
	slog.Info("started swtpm", "pid", swtpm.Process.Pid, "state", cfg.StateDir)
	defer stopProcess("swtpm", swtpm)

	if err := waitForSocket(ctx, tpmSock); err != nil {
		return nil, fmt.Errorf("swtpm (pid %d) did not create %s: %w; see %s", swtpm.Process.Pid, tpmSock, err, swtpmLog)
	}

	consolePath := filepath.Join(cfg.WorkDir, "console.log")
	console, err := os.Create(consolePath)
	if err != nil {
		return nil, fmt.Errorf("create console log: %w", err)
	}
	defer console.Close()

	appendLine := DefaultAppend
	if cfg.Append != "" {
		appendLine += " " + cfg.Append
	}
	accel := []string{"-accel", "tcg"}
	if os.Getenv(KVMEnv) == "1" {
		accel = []string{"-accel", "kvm", "-cpu", "host"}
	}
	args := append(accel,
		"-m", fmt.Sprint(cfg.MemoryMB),
		"-nographic", "-no-reboot", "-nic", "none",
		"-kernel", cfg.Kernel,
		"-initrd", initrdPath,
		"-append", appendLine,
		"-chardev", "socket,id=chrtpm,path="+tpmSock,
		"-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
		"-device", "tpm-tis,tpmdev=tpm0")
	qemu := exec.Command("qemu-system-x86_64", args...)
	qemu.Stdout = console
	qemu.Stderr = console
	if err := qemu.Start(); err != nil {
		return nil, fmt.Errorf("start QEMU: %w", err)
	}
	slog.Info("started QEMU", "pid", qemu.Process.Pid, "kernel", cfg.Kernel, "console", consolePath)
	defer stopProcess("QEMU", qemu)

	done := make(chan error, 1)
	go func() { done <- qemu.Wait() }()

	var runErr error
	select {
	case err := <-done:
		if err != nil {
			runErr = fmt.Errorf("QEMU (pid %d) failed: %w; see %s", qemu.Process.Pid, err, consolePath)
		}
	case <-ctx.Done():
		runErr = fmt.Errorf("%w after %v; console in %s", ErrTimeout, cfg.Timeout, consolePath)
		if qemu.Process != nil {
			qemu.Process.Kill()
		}
		<-done
	}
	// Wait marks the process as finished, so stopProcess leaves it alone.

	out, err := os.ReadFile(consolePath)
	if err != nil && runErr == nil {
		runErr = fmt.Errorf("read console log: %w", err)
	}
	return &Result{Console: string(out), ConsolePath: consolePath, Duration: time.Since(start)}, runErr
}

// stopProcess ends a process that this package started, by its PID, and
// waits for it. A process that already exited is left alone.
func stopProcess(name string, cmd *exec.Cmd) {
	if cmd.Process == nil || cmd.ProcessState != nil {
		return
	}
	if err := cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		slog.Warn("stopping process failed", "name", name, "pid", cmd.Process.Pid, "err", err)
	}
	cmd.Wait()
}

func waitForSocket(ctx context.Context, path string) error {
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Marker lines delimit results on the console: the guest prints
// BeginMarker+NAME on a line, the content, then EndMarker+NAME.
const (
	BeginMarker = "@@imashard-begin "
	EndMarker   = "@@imashard-end "
)

// Sections returns the contents of every section called name, in console
// order, with carriage returns removed. A section without an end marker is
// left out.
func Sections(console, name string) []string {
	var out []string
	var cur []string
	inside := false
	for _, line := range strings.Split(console, "\n") {
		line = strings.TrimRight(line, "\r")
		switch {
		case strings.TrimSpace(line) == strings.TrimSpace(BeginMarker+name):
			inside, cur = true, nil
		case inside && strings.TrimSpace(line) == strings.TrimSpace(EndMarker+name):
			inside = false
			out = append(out, strings.Join(cur, "\n"))
		case inside:
			cur = append(cur, line)
		}
	}
	return out
}

// DecodeBase64 decodes a section that holds base64, ignoring line breaks
// and other whitespace that the console adds.
func DecodeBase64(section string) ([]byte, error) {
	var clean bytes.Buffer
	for _, r := range section {
		if r == ' ' || r == '\n' || r == '\r' || r == '\t' {
			continue
		}
		clean.WriteRune(r)
	}
	b, err := base64.StdEncoding.DecodeString(clean.String())
	if err != nil {
		return nil, fmt.Errorf("decode base64 section (%d bytes): %w", clean.Len(), err)
	}
	return b, nil
}
