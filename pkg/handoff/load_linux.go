package handoff

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Syscall selects the system call that loads the next kernel.
type Syscall string

const (
	// SyscallLoad uses kexec_load: the kernel receives segments from
	// memory and opens no file, so IMA measures nothing while loading.
	SyscallLoad Syscall = "load"
	// SyscallFile uses kexec_file_load, which locked-down kernels require.
	// The kernel reads the image and initrd through file descriptors and,
	// under a policy with KEXEC_KERNEL_CHECK, KEXEC_INITRAMFS_CHECK or
	// KEXEC_CMDLINE rules, measures them into the log.
	SyscallFile Syscall = "file"
)

// ParseSyscall parses the value of a --syscall flag.
func ParseSyscall(s string) (Syscall, error) {
	switch Syscall(s) {
	case SyscallLoad, SyscallFile:
		return Syscall(s), nil
	}
	return "", fmt.Errorf("unknown kexec system call %q: use %q (kexec_load) or %q (kexec_file_load)", s, SyscallLoad, SyscallFile)
}

// ErrKexecNotSupported is returned when the running kernel lacks the
// requested kexec system call.
var ErrKexecNotSupported = errors.New("kexec not supported by the running kernel")

// CheckKernel returns an error wrapping ErrUnsupportedKernel when sc is
// SyscallLoad and kernel is not an image imashard's kexec_load loader can
// start, so that a wrong --kernel fails before the final snapshot and in a
// dry run. kexec_file_load checks the image in the running kernel instead.
func CheckKernel(kernel []byte, sc Syscall) error {
	if sc != SyscallLoad {
		return nil
	}
	_, err := parseSetupHeader(kernel)
	return err
}

// Load loads kernel and initrd, both already in memory, as the next kernel.
// kexec_load receives them as memory segments from imashard's own loader
// (x86_64 bzImage, boot protocol 2.12 or later). kexec_file_load receives
// them in memfds. A memfd is never opened by path, so IMA's FILE_CHECK hook
// does not run for it, and the caller's snapshot stays the end of the log
// unless the policy measures kexec_file_load itself.
func Load(kernel, initrd []byte, cmdline string, sc Syscall) error {
	slog.Info("loading next kernel", "syscall", sc, "kernel_bytes", len(kernel), "initrd_bytes", len(initrd), "cmdline", cmdline)
	var err error
	switch sc {
	case SyscallLoad:
		err = kexecLoadBzImage(kernel, initrd, cmdline)
	case SyscallFile:
		err = kexecFileLoad(kernel, initrd, cmdline)
	default:
		return fmt.Errorf("unknown kexec system call %q", sc)
	}
	if errors.Is(err, unix.ENOSYS) {
		return fmt.Errorf("%w: kexec_%s needs Linux built with CONFIG_KEXEC (kexec_load) or CONFIG_KEXEC_FILE (kexec_file_load, Linux 3.17 or later): %v", ErrKexecNotSupported, sc, err)
	}
	if err != nil {
		return fmt.Errorf("load next kernel with kexec_%s: %w", sc, err)
	}
	return nil
}

func kexecFileLoad(kernel, initrd []byte, cmdline string) error {
	kf, err := memfd("imashard-kernel", kernel)
	if err != nil {
		return err
	}
	defer kf.Close()

	rf, err := memfd("imashard-initrd", initrd)
	if err != nil {
		return err
	}
	defer rf.Close()

	return unix.KexecFileLoad(int(kf.Fd()), int(rf.Fd()), cmdline, 0)
}

// Unload discards a loaded kernel, so that a rejected handoff cannot be
// executed later by another tool's reboot. kexec_load with no segments
// unloads; locked-down kernels that allow only kexec_file_load unload with
// its KEXEC_FILE_UNLOAD flag.
//
// NOTE: the QEMU scenarios have not yet reached a rejection after a load,
// so this has run only through the fake in the unit tests.
func Unload(sc Syscall) error {
	var err error
	if sc == SyscallFile {
		err = unix.KexecFileLoad(-1, -1, "", unix.KEXEC_FILE_UNLOAD)
	} else if _, _, errno := unix.Syscall6(unix.SYS_KEXEC_LOAD, 0, 0, 0, 0, 0, 0); errno != 0 {
		err = errno
	}
	if err != nil {
		return fmt.Errorf("unload the loaded kexec kernel with kexec_%s: %w", sc, err)
	}
	return nil
}

// Execute reboots into the loaded kernel. It returns only on failure.
func Execute() error {
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_KEXEC); err != nil {
		return fmt.Errorf("reboot into the loaded kernel (LINUX_REBOOT_CMD_KEXEC): %w", err)
	}
	return nil
}

func memfd(name string, data []byte) (*os.File, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("memfd_create for %s (needs Linux 3.17 or later): %w", name, err)
	}
	f := os.NewFile(uintptr(fd), name)
	if _, err := f.Write(data); err != nil {
		f.Close()
		return nil, fmt.Errorf("write %d bytes to memfd %s: %w", len(data), name, err)
	}
	if _, err := f.Seek(0, 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("rewind memfd %s: %w", name, err)
	}
	return f, nil
}

// EntryCount reads an IMA entry count file such as
// /sys/kernel/security/ima/runtime_measurements_count.
func EntryCount(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read IMA entry count: %w (is securityfs mounted at /sys/kernel/security and IMA enabled?)", err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("invalid IMA entry count %q in %s", strings.TrimSpace(string(b)), path)
	}
	return n, nil
}
