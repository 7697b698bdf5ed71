package vmtest

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"unsafe"
)

// InGuest reports whether the process runs as /init of a test VM.
func InGuest() bool {
	return os.Getpid() == 1
}

// GuestMain runs the tests as /init: it mounts the pseudo file systems,
// runs m, prints the exit code for Run to find, and powers the VM off. It
// never returns.
func GuestMain(m *testing.M) {
	mounts := []struct{ source, target, fstype string }{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"devtmpfs", "/dev", "devtmpfs"},
	}
	for _, mnt := range mounts {
		if err := syscall.Mount(mnt.source, mnt.target, mnt.fstype, 0, ""); err != nil {
			fmt.Printf("vmtest: mount %s on %s: %v\n", mnt.fstype, mnt.target, err)
		}
	}

	code := m.Run()
	fmt.Printf("\n%s%d\n", exitMarker, code)
	syscall.Sync()
	if code == 0 && kexecLoaded {
		fmt.Println("vmtest: executing the loaded kernel")
		if err := syscall.Reboot(syscall.LINUX_REBOOT_CMD_KEXEC); err != nil {
			fmt.Printf("vmtest: kexec reboot: %v\n", err)
		}
	}
	_ = syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}

var kexecLoaded bool

// KexecFileLoad loads /kernel with an initramfs made of the running
// initramfs's /init, /kernel and extra, and a command line that passes
// args to the next /init. GuestMain executes it after the tests pass.
func KexecFileLoad(cmdline string, args []string, extra map[string]File) error {
	initData, err := os.ReadFile("/init")
	if err != nil {
		return err
	}
	kernelData, err := os.ReadFile("/kernel")
	if err != nil {
		return err
	}
	files := map[string]File{
		"init":   {Mode: 0o755, Data: initData},
		"kernel": {Mode: 0o644, Data: kernelData},
		"dev":    {Mode: 0o755, Dir: true},
		"proc":   {Mode: 0o755, Dir: true},
		"sys":    {Mode: 0o755, Dir: true},
		"tmp":    {Mode: 0o1777, Dir: true},
	}
	for name, f := range extra {
		files[name] = f
	}
	archive, err := NewcArchive(files)
	if err != nil {
		return err
	}
	if err := os.WriteFile("/tmp/next-initrd", archive, 0o644); err != nil {
		return err
	}

	kernel, err := os.Open("/kernel")
	if err != nil {
		return err
	}
	defer kernel.Close()
	initrd, err := os.Open("/tmp/next-initrd")
	if err != nil {
		return err
	}
	defer initrd.Close()

	full := cmdline + " -- " + strings.Join(args, " ")
	cmd := append([]byte(full), 0)
	_, _, errno := syscall.Syscall6(sysKexecFileLoad, kernel.Fd(), initrd.Fd(),
		uintptr(len(cmd)), uintptr(unsafe.Pointer(&cmd[0])), 0, 0)
	if errno != 0 {
		return fmt.Errorf("kexec_file_load: %w", errno)
	}
	kexecLoaded = true
	return nil
}

// Cmdline returns the running kernel's command line up to " -- ".
func Cmdline() (string, error) {
	data, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return "", err
	}
	line := strings.TrimSpace(string(data))
	if i := strings.Index(line, " -- "); i >= 0 {
		line = line[:i]
	}
	return line, nil
}

// sysKexecFileLoad is the x86_64 number of kexec_file_load, which the
// syscall package does not name.
const sysKexecFileLoad = 320
