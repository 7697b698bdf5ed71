package vmtest

import (
	"fmt"
	"os"
	"syscall"
	"testing"
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
	_ = syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}
