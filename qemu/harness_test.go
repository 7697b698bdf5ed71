package qemu_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imashard/imashard/pkg/handoff"
	"github.com/imashard/imashard/qemu/vm"
)

// Environment variables that `make test` sets to the kernel and the
// initramfs that `make kernel` and `make initramfs` produce.
const (
	kernelEnv    = "IMASHARD_KERNEL"
	initramfsEnv = "IMASHARD_INITRAMFS"
)

type guest struct {
	kernel, initramfs string
	kernelData        []byte
	initramfsData     []byte
}

func needGuest(t *testing.T) guest {
	t.Helper()
	return loadGuest(t, kernelEnv, "QEMU scenario")
}

// loadGuest reads the kernel named by kernelVar and the initramfs, or skips
// the test with a message naming `make test` when either is not set.
func loadGuest(t *testing.T, kernelVar, scenario string) guest {
	t.Helper()
	g := guest{kernel: os.Getenv(kernelVar), initramfs: os.Getenv(initramfsEnv)}
	if g.kernel == "" || g.initramfs == "" {
		t.Skipf("%s skipped: %s and %s are not set; run `make test` (or `make kernel initramfs` and set them)", scenario, kernelVar, initramfsEnv)
	}

	var err error
	if g.kernelData, err = os.ReadFile(g.kernel); err != nil {
		t.Fatalf("read kernel: %v", err)
	}
	if g.initramfsData, err = os.ReadFile(g.initramfs); err != nil {
		t.Fatalf("read initramfs: %v", err)
	}
	return g
}

// overlay returns the files every multi-boot scenario needs: the next
// kernel and the base initramfs at /carry, and the scenario script.
func (g guest) overlay(script string) []handoff.File {
	return []handoff.File{
		{Path: "carry/vmlinuz", Data: g.kernelData},
		{Path: "carry/initramfs.cpio", Data: g.initramfsData},
		{Path: "scenario.sh", Data: []byte(script), Mode: 0o755},
	}
}

func runGuest(t *testing.T, g guest, stateDir string, files []handoff.File, timeout time.Duration) *vm.Result {
	t.Helper()
	work := t.TempDir()
	res, err := vm.Run(context.Background(), vm.Config{
		Kernel:   g.kernel,
		Initrd:   g.initramfs,
		Overlay:  files,
		StateDir: stateDir,
		WorkDir:  work,
		Timeout:  timeout,
	})
	if res != nil {
		t.Logf("guest ran %v; console: %s", res.Duration.Round(time.Millisecond), res.ConsolePath)
		if t.Failed() || err != nil {
			t.Logf("console tail:\n%s", tail(res.Console, 60))
		}
	}
	if err != nil {
		t.Fatalf("run guest: %v", err)
	}
	if keep := os.Getenv("IMASHARD_KEEP_CONSOLE"); keep != "" {
		os.WriteFile(filepath.Join(keep, strings.ReplaceAll(t.Name(), "/", "_")+".console.log"), []byte(res.Console), 0o644)
	}
	return res
}

func tail(s string, lines int) string {
	parts := strings.Split(s, "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}

// bootCounter is the shell prologue of every multi-boot scenario: the boot
// number travels in /carry/boot, written before each kexec.
const bootCounter = `
boot=1
if [ -e /carry/boot ]; then boot=$(cat /carry/boot); fi
echo "@@imashard-begin boot"
echo $boot
echo "@@imashard-end boot"
`

// The handoff alone, without shards: boot 1 writes a file below /carry and
// kexecs with `imashard kexec`; boot 2 must see the file and the counter.
// Both system calls run, kexec_file_load under the default tcb policy.
func TestKexecCarriesFile(t *testing.T) {
	g := needGuest(t)
	for _, syscall := range []string{"load", "file"} {
		t.Run(syscall, func(t *testing.T) {
			script := bootCounter + `
if [ "$boot" = "1" ]; then
	echo 2 > /carry/boot
	echo carried-from-boot-1 > /carry/note
	imashard kexec --syscall ` + syscall + ` --kernel /carry/vmlinuz --initrd /carry/initramfs.cpio --carry /carry --carry /scenario.sh --skip-snapshot --force
	echo "@@imashard-begin kexec-failed"
	echo "@@imashard-end kexec-failed"
else
	echo "@@imashard-begin note"
	cat /carry/note
	echo "@@imashard-end note"
fi
`
			res := runGuest(t, g, t.TempDir(), g.overlay(script), 4*time.Minute)

			boots := vm.Sections(res.Console, "boot")
			if len(boots) != 2 || strings.TrimSpace(boots[0]) != "1" || strings.TrimSpace(boots[1]) != "2" {
				t.Errorf("boot sections = %q, want [1 2]", boots)
			}
			if f := vm.Sections(res.Console, "kexec-failed"); len(f) != 0 {
				t.Errorf("imashard kexec returned in boot 1 instead of rebooting")
			}
			notes := vm.Sections(res.Console, "note")
			if len(notes) != 1 || strings.TrimSpace(notes[0]) != "carried-from-boot-1" {
				t.Errorf("note sections = %q, want one with carried-from-boot-1", notes)
			}
		})
	}
}
