package vmtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// KernelEnv names the environment variable with the bzImage path of the
// custom kernel (CONFIG_IMA_STAGING, CONFIG_IMA_KEXEC). `make test` sets it.
const KernelEnv = "IMASHARD_CUSTOM_KERNEL"

// exitMarker is printed by the guest's /init with the test exit code.
const exitMarker = "IMASHARD-GUEST-EXIT="

// Options configures one VM run.
type Options struct {
	Kernel  string        // bzImage path
	Package string        // Go package whose test binary becomes /init, e.g. ./pkg/securityfs
	Dir     string        // module root to build in
	Args    []string      // test binary flags, e.g. -test.run=TestGuest
	Policy  string        // ima_policy= value; default tcb
	Extra   map[string]File // more initramfs files, e.g. "kernel" for kexec tests
	Timeout time.Duration // whole run; default 3 minutes
}

// Result is the serial console output and the guest test's exit code.
type Result struct {
	Console  string
	ExitCode int
}

// Kernel returns the custom kernel path from KernelEnv, or skips the test.
func Kernel(t testing.TB) string {
	t.Helper()
	k := os.Getenv(KernelEnv)
	if k == "" {
		t.Skipf("%s not set: run `make kernel KERNEL=custom` and set it to the bzImage to run tests in the custom kernel", KernelEnv)
	}
	if _, err := os.Stat(k); err != nil {
		t.Fatalf("%s=%s: %v", KernelEnv, k, err)
	}
	for _, tool := range []string{"qemu-system-x86_64", "swtpm"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: run `make deps` as root", tool)
		}
	}
	return k
}

// Run builds the test binary of opts.Package statically, boots it as /init
// with a fresh swtpm attached, and returns the console output. Every
// process it starts is ended by PID.
func Run(ctx context.Context, t testing.TB, opts Options) (*Result, error) {
	t.Helper()
	if opts.Timeout == 0 {
		opts.Timeout = 3 * time.Minute
	}
	if opts.Policy == "" {
		opts.Policy = "tcb"
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	dir := t.TempDir()

	binary := filepath.Join(dir, "init.test")
	build := exec.CommandContext(ctx, "go", "test", "-c", "-o", binary, opts.Package)
	build.Dir = opts.Dir
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build guest test binary of %s: %v\n%s", opts.Package, err, out)
	}
	initData, err := os.ReadFile(binary)
	if err != nil {
		return nil, err
	}
	files := map[string]File{
		"init": {Mode: 0o755, Data: initData},
		"dev":  {Mode: 0o755, Dir: true},
		"proc": {Mode: 0o755, Dir: true},
		"sys":  {Mode: 0o755, Dir: true},
		"tmp":  {Mode: 0o1777, Dir: true},
	}
	for name, f := range opts.Extra {
		files[name] = f
	}
	archive, err := NewcArchive(files)
	if err != nil {
		return nil, err
	}
	initrd := filepath.Join(dir, "initrd.cpio")
	if err := os.WriteFile(initrd, archive, 0o644); err != nil {
		return nil, err
	}

	stopTPM, tpmSocket, err := startSwtpm(ctx, dir)
	if err != nil {
		return nil, err
	}
	defer stopTPM()

	// Arguments after "--" reach /init as argv.
	appendLine := "console=ttyS0 panic=-1 rootfstype=ramfs ima_policy=" + opts.Policy + " -- " + strings.Join(opts.Args, " ")
	qemu := exec.Command("qemu-system-x86_64",
		"-accel", "tcg", "-m", "1024", "-nographic", "-no-reboot", "-nic", "none",
		"-kernel", opts.Kernel, "-initrd", initrd, "-append", appendLine,
		"-chardev", "socket,id=chrtpm,path="+tpmSocket,
		"-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
		"-device", "tpm-tis,tpmdev=tpm0")
	var console lockedBuffer
	qemu.Stdout = &console
	qemu.Stderr = &console
	slog.Info("starting QEMU", "kernel", opts.Kernel, "append", appendLine)
	if err := qemu.Start(); err != nil {
		return nil, fmt.Errorf("start qemu-system-x86_64: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- qemu.Wait() }()

	select {
	case err := <-done:
		if err != nil {
			return &Result{Console: console.String(), ExitCode: -1}, fmt.Errorf("qemu exited: %w", err)
		}
	case <-ctx.Done():
		_ = syscall.Kill(qemu.Process.Pid, syscall.SIGKILL)
		<-done
		return &Result{Console: console.String(), ExitCode: -1}, fmt.Errorf("guest timed out after %v", opts.Timeout)
	}

	out := console.String()
	// After a kexec every boot prints its own exit code; the last one counts.
	all := regexp.MustCompile(exitMarker + `(-?\d+)`).FindAllStringSubmatch(out, -1)
	var m []string
	if len(all) > 0 {
		m = all[len(all)-1]
	}
	if m == nil {
		return &Result{Console: out, ExitCode: -1}, errors.New("guest ended without printing its exit code (kernel panic or /init crash?)")
	}
	code, _ := strconv.Atoi(m[1])
	return &Result{Console: out, ExitCode: code}, nil
}

func startSwtpm(ctx context.Context, dir string) (stop func(), socket string, err error) {
	state := filepath.Join(dir, "tpm")
	if err := os.MkdirAll(state, 0o700); err != nil {
		return nil, "", err
	}
	socket = filepath.Join(state, "swtpm.sock")
	cmd := exec.Command("swtpm", "socket", "--tpm2", "--tpmstate", "dir="+state,
		"--ctrl", "type=unixio,path="+socket, "--terminate")
	var out lockedBuffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Start(); err != nil {
		return nil, "", fmt.Errorf("start swtpm: %w", err)
	}
	stop = func() {
		_ = syscall.Kill(cmd.Process.Pid, syscall.SIGTERM)
		_ = cmd.Wait()
	}
	for {
		if _, err := os.Stat(socket); err == nil {
			return stop, socket, nil
		}
		select {
		case <-ctx.Done():
			stop()
			return nil, "", fmt.Errorf("swtpm did not create %s: %s", socket, out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
