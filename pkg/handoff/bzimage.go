package handoff

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// This file prepares the kexec_load segments for an x86_64 bzImage by the
// 64-bit boot protocol of Linux's Documentation/arch/x86/boot.rst. It loads
// the protected-mode part of the image unchanged, so the kernel decompresses
// itself, whatever compression it was built with. The offsets below are
// those of struct boot_params (the zero page) and its setup header.

// ErrUnsupportedKernel reports a kernel image that this kexec_load loader
// cannot start.
var ErrUnsupportedKernel = errors.New("kernel image not supported by the kexec_load loader")

// ErrNoRoom reports that the segments do not fit into the RAM ranges of the
// memory map.
var ErrNoRoom = errors.New("no room in RAM for the kexec segments")

const (
	pageSize     = 4096
	zeroPageSize = 4096 // struct boot_params

	// Zero page fields outside the setup header.
	offExtRamdiskImage = 0x0c0
	offExtRamdiskSize  = 0x0c4
	offExtCmdLinePtr   = 0x0c8
	offE820Entries     = 0x1e8
	offSentinel        = 0x1ef
	offE820Table       = 0x2d0
	e820EntrySize      = 20
	e820MaxEntries     = 128

	// Setup header fields, at their offsets in both the image and the
	// zero page.
	offSetupHeader     = 0x1f1
	offSetupSects      = 0x1f1
	offBootFlag        = 0x1fe
	offJump            = 0x201
	offHeaderMagic     = 0x202
	offVersion         = 0x206
	offTypeOfLoader    = 0x210
	offLoadFlags       = 0x211
	offCode32Start     = 0x214
	offRamdiskImage    = 0x218
	offRamdiskSize     = 0x21c
	offCmdLinePtr      = 0x228
	offInitrdAddrMax   = 0x22c
	offKernelAlignment = 0x230
	offRelocatable     = 0x234
	offXLoadFlags      = 0x236
	offCmdlineSize     = 0x238
	offPrefAddress     = 0x258
	offInitSize        = 0x260
	// The zero page field after the setup header (edd_mbr_sig_buffer)
	// starts here, so a header never reaches past it.
	setupHeaderLimit = 0x290

	bootFlag       = 0xaa55
	loadedHigh     = 1 << 0 // loadflags: protected-mode code at 0x100000
	canUseHeap     = 1 << 7 // loadflags: heap_end_ptr is valid
	xlfKernel64    = 1 << 0 // xloadflags: 64-bit entry point at +0x200
	xlfAbove4G     = 1 << 1 // xloadflags: kernel and initrd may sit above 4 GiB
	minVersion     = 0x020c // 2.12, the first with xloadflags
	entry64Offset  = 0x200
	loaderUnknown  = 0xff // type_of_loader for a boot loader without an assigned ID
	e820TypeRAM    = 1
	lowMemoryLimit = 1 << 20
	fourGiB        = 1 << 32
)

// setupHeader contains the setup header fields of a bzImage that the loader
// reads.
type setupHeader struct {
	version         uint16
	setupSects      int
	loadFlags       uint8
	initrdAddrMax   uint32
	kernelAlignment uint32
	relocatable     bool
	xLoadFlags      uint16
	cmdlineSize     uint32
	prefAddress     uint64
	initSize        uint32
	headerEnd       int // offset of the first byte after the setup header
}

// parseSetupHeader reads and checks the setup header of a bzImage.
func parseSetupHeader(image []byte) (*setupHeader, error) {
	if len(image) < setupHeaderLimit {
		return nil, fmt.Errorf("%w: %d bytes is too short for a bzImage", ErrUnsupportedKernel, len(image))
	}
	le := binary.LittleEndian
	if le.Uint16(image[offBootFlag:]) != bootFlag || !bytes.Equal(image[offHeaderMagic:offHeaderMagic+4], []byte("HdrS")) {
		return nil, fmt.Errorf("%w: no bzImage setup header (boot flag 0xAA55 and \"HdrS\"): pass the kernel's bzImage (vmlinuz), not an ELF vmlinux", ErrUnsupportedKernel)
	}
	h := &setupHeader{
		version:         le.Uint16(image[offVersion:]),
		setupSects:      int(image[offSetupSects]),
		loadFlags:       image[offLoadFlags],
		initrdAddrMax:   le.Uint32(image[offInitrdAddrMax:]),
		kernelAlignment: le.Uint32(image[offKernelAlignment:]),
		relocatable:     image[offRelocatable] != 0,
		xLoadFlags:      le.Uint16(image[offXLoadFlags:]),
		cmdlineSize:     le.Uint32(image[offCmdlineSize:]),
		prefAddress:     le.Uint64(image[offPrefAddress:]),
		initSize:        le.Uint32(image[offInitSize:]),
		headerEnd:       min(offHeaderMagic+int(image[offJump]), setupHeaderLimit),
	}
	if h.setupSects == 0 {
		h.setupSects = 4 // boot.rst: a zero setup_sects means 4
	}

	if h.version < minVersion {
		return nil, fmt.Errorf("%w: boot protocol %d.%02d, need 2.12 or later (Linux 3.8 or later) for the 64-bit entry point: use --syscall file", ErrUnsupportedKernel, h.version>>8, h.version&0xff)
	}
	if h.xLoadFlags&xlfKernel64 == 0 {
		return nil, fmt.Errorf("%w: xloadflags %#x lack XLF_KERNEL_64, so the image has no 64-bit entry point: pass an x86_64 kernel", ErrUnsupportedKernel, h.xLoadFlags)
	}
	if !h.relocatable {
		return nil, fmt.Errorf("%w: the kernel is not relocatable: build it with CONFIG_RELOCATABLE=y", ErrUnsupportedKernel)
	}
	if h.loadFlags&loadedHigh == 0 {
		return nil, fmt.Errorf("%w: loadflags %#x lack LOADED_HIGH: not a bzImage", ErrUnsupportedKernel, h.loadFlags)
	}
	if a := h.kernelAlignment; a < pageSize || a&(a-1) != 0 {
		return nil, fmt.Errorf("%w: kernel_alignment %#x is not a power of two of at least 4096", ErrUnsupportedKernel, a)
	}
	if h.headerEnd < offInitSize+4 {
		return nil, fmt.Errorf("%w: setup header ends at %#x, before init_size", ErrUnsupportedKernel, h.headerEnd)
	}
	if len(image) <= h.setupSize() {
		return nil, fmt.Errorf("%w: %d bytes, but the %d setup sectors alone take %d", ErrUnsupportedKernel, len(image), h.setupSects, h.setupSize())
	}
	return h, nil
}

// setupSize returns the size of the real-mode part that precedes the
// protected-mode kernel in the image: the boot sector and the setup sectors.
func (h *setupHeader) setupSize() int {
	return (h.setupSects + 1) * 512
}

// physRange is the physical address range [start, end).
type physRange struct {
	start, end uint64
}

func (r physRange) String() string {
	return fmt.Sprintf("[%#x-%#x)", r.start, r.end)
}

// loadSegment is one kexec_load segment: data copied to the physical address
// mem, followed by zeros up to memSize bytes.
type loadSegment struct {
	name    string // for logs and errors
	data    []byte
	mem     uint64
	memSize uint64 // page-aligned, at least len(data)
}

// kexecImage is everything kexec_load needs: the segments and the physical
// address where the new kernel's execution starts.
type kexecImage struct {
	entry    uint64
	segments []loadSegment
}

// planKexecLoad lays out an x86_64 bzImage, its initrd, the command line, a
// zero page and the purgatory in the RAM ranges ram. bootParams is the
// running kernel's zero page (/sys/kernel/boot_params/data): the new zero
// page keeps its firmware data, such as the e820 table, the screen info and
// the ACPI RSDP address, and takes the setup header from the new image.
func planKexecLoad(image, initrd []byte, cmdline string, bootParams []byte, ram []physRange) (*kexecImage, error) {
	h, err := parseSetupHeader(image)
	if err != nil {
		return nil, err
	}
	if len(bootParams) != zeroPageSize {
		return nil, fmt.Errorf("running kernel's boot parameters are %d bytes, want %d (struct boot_params): use --syscall file", len(bootParams), zeroPageSize)
	}
	if uint64(len(cmdline)) > uint64(h.cmdlineSize) {
		return nil, fmt.Errorf("%w: command line of %d bytes exceeds the kernel's cmdline_size of %d bytes: shorten --cmdline or --append", ErrUnsupportedKernel, len(cmdline), h.cmdlineSize)
	}
	if bytes.IndexByte([]byte(cmdline), 0) >= 0 {
		return nil, fmt.Errorf("command line %q contains a NUL byte: remove it from --cmdline or --append", cmdline)
	}

	mem := newFreeRanges(ram, lowMemoryLimit)
	kernelCode := image[h.setupSize():]
	kernel, err := mem.placeKernel(h, kernelCode)
	if err != nil {
		return nil, err
	}
	segments := []loadSegment{kernel}

	// The initrd goes as high as initrd_addr_max, the highest address it
	// may occupy, allows. That keeps it away from the kernel's
	// decompression area.
	var initrdSeg loadSegment
	if len(initrd) > 0 {
		if initrdSeg, err = mem.placeTop("initrd", initrd, uint64(h.initrdAddrMax)+1); err != nil {
			return nil, err
		}
		segments = append(segments, initrdSeg)
	}

	// The zero page and the command line share one segment, the command
	// line right after the zero page.
	params := make([]byte, zeroPageSize, zeroPageSize+len(cmdline)+1)
	copy(params, bootParams)
	params = append(append(params, cmdline...), 0)
	paramsSeg, err := mem.placeTop("zero page and command line", params, fourGiB)
	if err != nil {
		return nil, err
	}
	fillZeroPage(paramsSeg.data[:zeroPageSize], image, h, kernel.mem, initrdSeg, paramsSeg.mem+zeroPageSize)
	segments = append(segments, paramsSeg)

	purgatory := bytes.Clone(purgatoryCode)
	binary.LittleEndian.PutUint64(purgatory[purgatoryBootParamsOffset:], paramsSeg.mem)
	binary.LittleEndian.PutUint64(purgatory[purgatoryEntryOffset:], kernel.mem+entry64Offset)
	purgatorySeg, err := mem.placeTop("purgatory", purgatory, fourGiB)
	if err != nil {
		return nil, err
	}
	segments = append(segments, purgatorySeg)

	return &kexecImage{entry: purgatorySeg.mem, segments: segments}, nil
}

// fillZeroPage turns a copy of the running kernel's zero page into the new
// kernel's: it takes the setup header from image and points it at the
// initrd and the command line.
func fillZeroPage(zp, image []byte, h *setupHeader, kernelAddr uint64, initrd loadSegment, cmdlineAddr uint64) {
	le := binary.LittleEndian
	// The header from the image also clears what the running kernel's boot
	// loader wrote into it, such as a setup_data list in old memory.
	copy(zp[offSetupHeader:h.headerEnd], image[offSetupHeader:h.headerEnd])

	// The kernel reads a non-zero sentinel as a loader that left unknown
	// fields uncleared, and then wipes many of them.
	zp[offSentinel] = 0
	zp[offTypeOfLoader] = loaderUnknown
	zp[offLoadFlags] &^= canUseHeap // no real-mode heap on the 64-bit entry
	// The boot protocol (Documentation/arch/x86/boot.rst) has a loader of
	// a relocatable kernel set code32_start to the loaded code. The 64-bit
	// entry does not read it.
	le.PutUint32(zp[offCode32Start:], uint32(kernelAddr))

	le.PutUint32(zp[offCmdLinePtr:], uint32(cmdlineAddr))
	le.PutUint32(zp[offExtCmdLinePtr:], uint32(cmdlineAddr>>32))
	le.PutUint32(zp[offRamdiskImage:], uint32(initrd.mem))
	le.PutUint32(zp[offExtRamdiskImage:], uint32(initrd.mem>>32))
	le.PutUint32(zp[offRamdiskSize:], uint32(len(initrd.data)))
	le.PutUint32(zp[offExtRamdiskSize:], uint32(uint64(len(initrd.data))>>32))
}

// freeRanges is the RAM not yet taken by a segment, sorted by address and
// without overlaps.
type freeRanges []physRange

// newFreeRanges returns the page-aligned parts of ram at or above floor.
func newFreeRanges(ram []physRange, floor uint64) freeRanges {
	var free freeRanges
	for _, r := range ram {
		r.start = alignUp(max(r.start, floor), pageSize)
		r.end = r.end &^ (pageSize - 1)
		if r.start < r.end {
			free = free.add(r)
		}
	}
	return free
}

// add inserts r, merging it with the ranges it overlaps or touches, so that
// a RAM map that lists one range twice does not yield overlapping segments.
func (f freeRanges) add(r physRange) freeRanges {
	var out freeRanges
	inserted := false
	for _, x := range f {
		switch {
		case x.end < r.start:
			out = append(out, x)
		case r.end < x.start:
			if !inserted {
				out = append(out, r)
				inserted = true
			}
			out = append(out, x)
		default:
			r = physRange{min(r.start, x.start), max(r.end, x.end)}
		}
	}
	if !inserted {
		out = append(out, r)
	}
	return out
}

// take removes [start, end) from the free ranges.
func (f *freeRanges) take(start, end uint64) {
	var out freeRanges
	for _, x := range *f {
		if x.end <= start || end <= x.start {
			out = append(out, x)
			continue
		}
		if x.start < start {
			out = append(out, physRange{x.start, start})
		}
		if end < x.end {
			out = append(out, physRange{end, x.end})
		}
	}
	*f = out
}

// placeKernel places the protected-mode kernel at the lowest address aligned
// to kernel_alignment, preferring pref_address and above, where init_size
// bytes fit: the kernel decompresses itself within that area.
func (f *freeRanges) placeKernel(h *setupHeader, code []byte) (loadSegment, error) {
	size := alignUp(max(uint64(len(code)), uint64(h.initSize)), pageSize)
	align := uint64(h.kernelAlignment)
	limit := uint64(fourGiB)
	if h.xLoadFlags&xlfAbove4G != 0 {
		limit = ^uint64(0)
	}
	for _, floor := range []uint64{h.prefAddress, lowMemoryLimit} {
		for _, r := range *f {
			start := alignUp(max(r.start, floor), align)
			if start < r.start || start+size < start || start+size > r.end || start+size > limit {
				continue
			}
			f.take(start, start+size)
			return loadSegment{name: "kernel", data: code, mem: start, memSize: size}, nil
		}
	}
	return loadSegment{}, fmt.Errorf("%w: the kernel needs %d bytes (init_size) aligned to %#x, and no free RAM range above 1 MiB has them (free: %v): use a smaller initrd or --syscall file", ErrNoRoom, size, align, *f)
}

// placeTop places data page-aligned at the highest free address below limit.
func (f *freeRanges) placeTop(name string, data []byte, limit uint64) (loadSegment, error) {
	size := alignUp(uint64(len(data)), pageSize)
	for i := len(*f) - 1; i >= 0; i-- {
		r := (*f)[i]
		end := min(r.end, limit&^(pageSize-1))
		if end < r.start+size || end < size {
			continue
		}
		start := end - size
		f.take(start, end)
		return loadSegment{name: name, data: data, mem: start, memSize: size}, nil
	}
	return loadSegment{}, fmt.Errorf("%w: %s needs %d bytes below %#x (free: %v): use a smaller initrd or --syscall file", ErrNoRoom, name, size, limit, *f)
}

func alignUp(x, align uint64) uint64 {
	return (x + align - 1) &^ (align - 1)
}

// e820RAM returns the RAM ranges of the e820 table in a zero page, for
// kernels without /sys/firmware/memmap (CONFIG_FIRMWARE_MEMMAP=n).
func e820RAM(zeroPage []byte) ([]physRange, error) {
	if len(zeroPage) != zeroPageSize {
		return nil, fmt.Errorf("boot parameters are %d bytes, want %d: use --syscall file", len(zeroPage), zeroPageSize)
	}
	n := int(zeroPage[offE820Entries])
	if n > e820MaxEntries {
		return nil, fmt.Errorf("boot parameters list %d e820 entries, more than the table's %d: use --syscall file", n, e820MaxEntries)
	}
	var ram []physRange
	for i := range n {
		e := zeroPage[offE820Table+i*e820EntrySize:]
		addr := binary.LittleEndian.Uint64(e)
		size := binary.LittleEndian.Uint64(e[8:])
		if binary.LittleEndian.Uint32(e[16:]) == e820TypeRAM && size > 0 && addr+size > addr {
			ram = append(ram, physRange{addr, addr + size})
		}
	}
	return ram, nil
}
