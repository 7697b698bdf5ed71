// Command init is PID 1 of the initramfs that scripts/qemu-log/run.sh boots.
// It mounts the kernel file systems and runs imashard log replay against the
// TPM's PCR 10 in every bank, read from sysfs and from /dev/tpmrm0. It prints the result between marker lines for
// the host, then powers the VM off.
package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
)

func main() {
	mounts := []struct{ source, target, fstype string }{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"devtmpfs", "/dev", "devtmpfs"},
		{"securityfs", "/sys/kernel/security", "securityfs"},
	}
	for _, m := range mounts {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			fmt.Printf("init: mkdir %s failed: %v\n", m.target, err)
		}
		if err := syscall.Mount(m.source, m.target, m.fstype, 0, ""); err != nil {
			fmt.Printf("init: mount %s on %s failed: %v\n", m.fstype, m.target, err)
		}
	}

	// PCR 10 of every bank the kernel shows; PCRs 0-9 belong to firmware.
	args := []string{"log", "replay", "--json"}
	banks, _ := filepath.Glob("/sys/class/tpm/tpm0/pcr-*")
	for _, bank := range banks {
		args = append(args, "--pcrs", filepath.Join(bank, "10"))
	}

	fmt.Println("IMASHARD-BEGIN")
	err := runImashard(args...)
	fmt.Println("IMASHARD-END")
	fmt.Printf("IMASHARD-EXIT %v\n", err)

	// The sha256 list: binary_runtime_measurements_sha256 on Linux 6.10 and
	// later, else the SHA-1 list.
	fmt.Println("IMASHARD-SHA256-BEGIN")
	err = runImashard(append([]string{"log", "replay", "--bank", "sha256"}, args[2:]...)...)
	fmt.Println("IMASHARD-SHA256-END")
	fmt.Printf("IMASHARD-SHA256-EXIT %v\n", err)

	// The same PCRs read through the kernel's resource manager.
	fmt.Println("IMASHARD-TPM-BEGIN")
	err = runImashard("log", "replay", "--tpm", "/dev/tpmrm0")
	fmt.Println("IMASHARD-TPM-END")
	fmt.Printf("IMASHARD-TPM-EXIT %v\n", err)

	show := exec.Command("/imashard", "log", "show")
	show.Stdout, show.Stderr = os.Stdout, os.Stdout
	fmt.Println("IMASHARD-SHOW-BEGIN")
	_ = show.Run()
	fmt.Println("IMASHARD-SHOW-END")

	syscall.Sync()
	_ = syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
}

func runImashard(args ...string) error {
	cmd := exec.Command("/imashard", args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stdout
	return cmd.Run()
}
