package handoff

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	bootParamsPath    = "/sys/kernel/boot_params/data"
	firmwareMemmapDir = "/sys/firmware/memmap"
)

// kexecLoadBzImage loads an x86_64 bzImage, its initrd and its command line
// with kexec_load.
//
// NOTE: run only on BIOS (SeaBIOS) QEMU guests so far. On an EFI machine
// the zero page keeps the running kernel's efi_info, as u-root's
// pkg/boot/linux did, but no setup_data with the EFI runtime mapping
// reaches the next kernel, so its EFI runtime services may not work.
func kexecLoadBzImage(kernel, initrd []byte, cmdline string) error {
	if runtime.GOARCH != "amd64" {
		return fmt.Errorf("%w: kexec_load is implemented for x86_64 bzImages only, this is %s: use --syscall file", ErrUnsupportedKernel, runtime.GOARCH)
	}
	bootParams, err := os.ReadFile(bootParamsPath)
	if err != nil {
		return fmt.Errorf("read the running kernel's boot parameters: %w", err)
	}
	ram, err := systemRAM(firmwareMemmapDir, bootParams)
	if err != nil {
		return err
	}
	img, err := planKexecLoad(kernel, initrd, cmdline, bootParams, ram)
	if err != nil {
		return err
	}
	for _, s := range img.segments {
		slog.Debug("kexec_load segment", "name", s.name, "mem", fmt.Sprintf("%#x", s.mem), "mem_size", s.memSize, "bytes", len(s.data))
	}
	return kexecLoad(img)
}

// systemRAM returns the "System RAM" ranges of the firmware memory map in
// dir. A kernel built without CONFIG_FIRMWARE_MEMMAP has no such directory,
// and then the e820 table in the zero page is the memory map.
func systemRAM(dir string, bootParams []byte) ([]physRange, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		slog.Info("no firmware memory map, using the e820 table of the boot parameters", "dir", dir)
		return e820RAM(bootParams)
	}
	if err != nil {
		return nil, fmt.Errorf("read the firmware memory map: %w", err)
	}

	var ram []physRange
	for _, e := range entries {
		entry := filepath.Join(dir, e.Name())
		typ, err := os.ReadFile(filepath.Join(entry, "type"))
		if err != nil {
			return nil, fmt.Errorf("read the firmware memory map: %w", err)
		}
		if strings.TrimSpace(string(typ)) != "System RAM" {
			continue
		}
		start, err := readHexFile(filepath.Join(entry, "start"))
		if err != nil {
			return nil, err
		}
		last, err := readHexFile(filepath.Join(entry, "end"))
		if err != nil {
			return nil, err
		}
		// The end file names the last byte of the range.
		if last < start || last == ^uint64(0) {
			return nil, fmt.Errorf("invalid firmware memory map entry %s: start %#x, end %#x", entry, start, last)
		}
		ram = append(ram, physRange{start, last + 1})
	}
	if len(ram) == 0 {
		return nil, fmt.Errorf("no System RAM in the firmware memory map %s", dir)
	}
	return ram, nil
}

func readHexFile(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read the firmware memory map: %w", err)
	}
	s := strings.TrimSpace(string(b))
	v, err := strconv.ParseUint(strings.TrimPrefix(s, "0x"), 16, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid address %q in %s", s, path)
	}
	return v, nil
}

// rawKexecSegment is struct kexec_segment of linux/kexec.h.
type rawKexecSegment struct {
	buf     unsafe.Pointer
	bufSize uintptr
	mem     uintptr
	memSize uintptr
}

func kexecLoad(img *kexecImage) error {
	raw := make([]rawKexecSegment, len(img.segments))
	for i, s := range img.segments {
		raw[i] = rawKexecSegment{
			buf:     unsafe.Pointer(unsafe.SliceData(s.data)),
			bufSize: uintptr(len(s.data)),
			mem:     uintptr(s.mem),
			memSize: uintptr(s.memSize),
		}
	}
	_, _, errno := unix.Syscall6(unix.SYS_KEXEC_LOAD, uintptr(img.entry), uintptr(len(raw)),
		uintptr(unsafe.Pointer(unsafe.SliceData(raw))), unix.KEXEC_ARCH_X86_64, 0, 0)
	runtime.KeepAlive(raw)
	runtime.KeepAlive(img)
	if errno != 0 {
		var layout []string
		for _, s := range img.segments {
			layout = append(layout, fmt.Sprintf("%s %v", s.name, physRange{s.mem, s.mem + s.memSize}))
		}
		return fmt.Errorf("kexec_load with entry %#x and segments %s: %w", img.entry, strings.Join(layout, ", "), errno)
	}
	return nil
}
