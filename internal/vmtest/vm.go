package vmtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imashard/imashard/qemu/vm"
)

// KernelEnv names the environment variable with the bzImage path of the
// custom kernel (CONFIG_IMA_STAGING, CONFIG_IMA_KEXEC). `make test` sets it.
const KernelEnv = "IMASHARD_CUSTOM_KERNEL"

// exitMarker is printed by the guest's /init with the test exit code.
const exitMarker = "IMASHARD-GUEST-EXIT="

// Options configures one VM run.
type Options struct {
	Kernel  string          // bzImage path
	Package string          // Go package whose test binary becomes /init, e.g. ./pkg/securityfs
	Dir     string          // module root to build in
	Args    []string        // test binary flags, e.g. -test.run=TestGuest
	Policy  string          // ima_policy= value; default tcb
	Extra   map[string]File // more initramfs files, e.g. "kernel" for kexec tests
	Timeout time.Duration   // whole run; default 3 minutes
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

	// The shared harness starts swtpm and QEMU and stops both by PID.
	stateDir := filepath.Join(dir, "tpm")
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, err
	}
	// Arguments after "--" reach /init as argv; a second ima_policy= adds
	// its rules to the harness's tcb policy.
	appendLine := "ima_policy=" + opts.Policy + " -- " + strings.Join(opts.Args, " ")
	vmResult, err := vm.Run(ctx, vm.Config{
		Kernel:   opts.Kernel,
		Initrd:   initrd,
		Append:   appendLine,
		StateDir: stateDir,
		WorkDir:  dir,
		Timeout:  opts.Timeout,
	})
	if err != nil {
		console := ""
		if vmResult != nil {
			console = vmResult.Console
		}
		return &Result{Console: console, ExitCode: -1}, err
	}

	out := vmResult.Console
	// After a kexec every boot prints its own exit code; the last one counts.
	all := regexp.MustCompile(exitMarker+`(-?\d+)`).FindAllStringSubmatch(out, -1)
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

// RunGuestTests runs opts like Run, logs the guest's console, and fails t
// unless the guest test binary exited 0 and reported each test in passed
// as passing.
func RunGuestTests(t *testing.T, opts Options, passed ...string) {
	t.Helper()
	res, err := Run(context.Background(), t, opts)
	if res != nil {
		t.Logf("guest console:\n%s", res.Console)
	}
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 {
		t.Fatalf("guest tests exited with %d", res.ExitCode)
	}
	for _, name := range passed {
		if !strings.Contains(res.Console, "--- PASS: "+name+" ") {
			t.Errorf("guest did not pass %s", name)
		}
	}
}
