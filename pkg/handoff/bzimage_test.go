package handoff

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// qemuRAM is the System RAM of a QEMU q35/pc guest with 1 GiB under SeaBIOS,
// as /sys/firmware/memmap lists it (end exclusive here).
var qemuRAM = []physRange{{0, 0x9fc00}, {0x100000, 0x3ffe0000}}

// testKernels returns the bzImages that `make kernel` cached (Debian's stock
// kernels and the custom one), or the one in IMASHARD_KERNEL.
func testKernels(t *testing.T) []string {
	t.Helper()
	if k := os.Getenv("IMASHARD_KERNEL"); k != "" {
		return []string{k}
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			t.Skipf("skipping: no home directory for the kernel cache: %v", err)
		}
		cache = filepath.Join(home, ".cache")
	}
	stock, _ := filepath.Glob(filepath.Join(cache, "imashard", "kernels", "*", "*", "vmlinuz"))
	custom, _ := filepath.Glob(filepath.Join(cache, "imashard", "kernels", "custom-*", "bzImage"))
	kernels := append(stock, custom...)
	if len(kernels) == 0 {
		t.Skip("skipping: no cached kernel; run `make kernel` or set IMASHARD_KERNEL to a bzImage")
	}
	return kernels
}

// syntheticBzImage returns a minimal image with a setup header that the
// loader accepts: protocol 2.15, 64-bit entry, relocatable, 2 MiB alignment,
// pref_address 16 MiB, init_size 8 MiB and 3 setup sectors.
func syntheticBzImage() []byte {
	le := binary.LittleEndian
	img := make([]byte, 4*512+20000)
	img[offSetupSects] = 3
	le.PutUint16(img[offBootFlag:], bootFlag)
	img[offJump] = 0x6a // header ends at 0x26c, as in Linux 6.1 and 7.2
	copy(img[offHeaderMagic:], "HdrS")
	le.PutUint16(img[offVersion:], 0x020f)
	img[offLoadFlags] = loadedHigh | canUseHeap
	le.PutUint32(img[offInitrdAddrMax:], 0x7fffffff)
	le.PutUint32(img[offKernelAlignment:], 0x200000)
	img[offRelocatable] = 1
	le.PutUint16(img[offXLoadFlags:], xlfKernel64|xlfAbove4G)
	le.PutUint32(img[offCmdlineSize:], 2047)
	le.PutUint64(img[offPrefAddress:], 0x1000000)
	le.PutUint32(img[offInitSize:], 0x800000)
	for i := 4 * 512; i < len(img); i++ {
		img[i] = byte(i)
	}
	return img
}

// syntheticBootParams returns a zero page as a running kernel exports it:
// an e820 table, an ACPI RSDP address, screen info and leftovers of the
// previous boot loader in the setup header.
func syntheticBootParams() []byte {
	le := binary.LittleEndian
	bp := make([]byte, zeroPageSize)
	for i := range 0x40 { // screen_info
		bp[i] = byte(0x40 + i)
	}
	le.PutUint64(bp[0x070:], 0xf5a80) // acpi_rsdp_addr
	e820 := []struct {
		addr, size uint64
		typ        uint32
	}{
		{0, 0x9fc00, 1}, {0x9fc00, 0x400, 2}, {0xf0000, 0x10000, 2},
		{0x100000, 0x3fee0000, 1}, {0x3ffe0000, 0x20000, 2}, {0xfffc0000, 0x40000, 2},
	}
	bp[offE820Entries] = byte(len(e820))
	for i, e := range e820 {
		off := offE820Table + i*e820EntrySize
		le.PutUint64(bp[off:], e.addr)
		le.PutUint64(bp[off+8:], e.size)
		le.PutUint32(bp[off+16:], e.typ)
	}
	bp[offSentinel] = 0xff
	bp[offTypeOfLoader] = 0x71 // GRUB 2
	le.PutUint32(bp[offCmdLinePtr:], 0x20000)
	le.PutUint64(bp[0x250:], 0x9d000) // setup_data of the previous boot
	return bp
}

// checkLayout checks the rules kexec_load and the boot protocol set for
// any plan: page-aligned segments inside RAM, no overlaps, the purgatory
// as the entry pointing at the zero page and the kernel's 64-bit entry.
func checkLayout(t *testing.T, img *kexecImage, ram []physRange) {
	t.Helper()
	segs := append([]loadSegment{}, img.segments...)
	sort.Slice(segs, func(i, j int) bool { return segs[i].mem < segs[j].mem })
	for i, s := range segs {
		if s.mem%pageSize != 0 || s.memSize%pageSize != 0 {
			t.Errorf("segment %s at %#x with size %#x is not page-aligned", s.name, s.mem, s.memSize)
		}
		if uint64(len(s.data)) > s.memSize {
			t.Errorf("segment %s has %d bytes in a %d-byte area", s.name, len(s.data), s.memSize)
		}
		if s.mem < lowMemoryLimit {
			t.Errorf("segment %s at %#x is below 1 MiB", s.name, s.mem)
		}
		inRAM := false
		for _, r := range ram {
			inRAM = inRAM || (r.start <= s.mem && s.mem+s.memSize <= r.end)
		}
		if !inRAM {
			t.Errorf("segment %s %v is not inside one RAM range of %v", s.name, physRange{s.mem, s.mem + s.memSize}, ram)
		}
		if i > 0 && segs[i-1].mem+segs[i-1].memSize > s.mem {
			t.Errorf("segments %s and %s overlap", segs[i-1].name, s.name)
		}
	}

	kernel, params, purgatory := img.segments[0], img.segments[len(img.segments)-2], img.segments[len(img.segments)-1]
	if img.entry != purgatory.mem {
		t.Errorf("entry %#x, want the purgatory at %#x", img.entry, purgatory.mem)
	}
	le := binary.LittleEndian
	if got := le.Uint64(purgatory.data[purgatoryBootParamsOffset:]); got != params.mem {
		t.Errorf("purgatory boot_params_address = %#x, want the zero page at %#x", got, params.mem)
	}
	if got := le.Uint64(purgatory.data[purgatoryEntryOffset:]); got != kernel.mem+0x200 {
		t.Errorf("purgatory kernel_entry = %#x, want load address %#x + 0x200", got, kernel.mem)
	}
	rest := bytes.Clone(purgatory.data)
	clear(rest[purgatoryBootParamsOffset : purgatoryEntryOffset+8])
	if !bytes.Equal(rest, purgatoryCode) {
		t.Errorf("purgatory differs from purgatoryCode outside the two addresses")
	}
}

func TestPlanKexecLoadSynthetic(t *testing.T) {
	image := syntheticBzImage()
	bootParams := syntheticBootParams()
	initrd := bytes.Repeat([]byte("initrd"), 5000)
	cmdline := "console=ttyS0 ima_policy=tcb"

	img, err := planKexecLoad(image, initrd, cmdline, bootParams, qemuRAM)
	if err != nil {
		t.Fatal(err)
	}
	checkLayout(t, img, qemuRAM)
	if len(img.segments) != 4 {
		t.Fatalf("%d segments, want kernel, initrd, zero page and purgatory", len(img.segments))
	}
	kernel, initrdSeg, params := img.segments[0], img.segments[1], img.segments[2]

	if !bytes.Equal(kernel.data, image[4*512:]) {
		t.Errorf("kernel segment is not the image after its 3 setup sectors and boot sector")
	}
	if kernel.mem != 0x1000000 {
		t.Errorf("kernel at %#x, want pref_address 0x1000000", kernel.mem)
	}
	if kernel.memSize != 0x800000 {
		t.Errorf("kernel area %#x bytes, want init_size 0x800000", kernel.memSize)
	}
	if !bytes.Equal(initrdSeg.data, initrd) {
		t.Errorf("initrd segment does not hold the initrd")
	}
	if end := initrdSeg.mem + initrdSeg.memSize; end != 0x3ffe0000 {
		t.Errorf("initrd ends at %#x, want the top of RAM 0x3ffe0000", end)
	}

	zp := params.data[:zeroPageSize]
	le := binary.LittleEndian
	if got := string(params.data[zeroPageSize:]); got != cmdline+"\x00" {
		t.Errorf("command line after the zero page = %q", got)
	}
	if got := le.Uint32(zp[offCmdLinePtr:]); uint64(got) != params.mem+zeroPageSize {
		t.Errorf("cmd_line_ptr = %#x, want %#x", got, params.mem+zeroPageSize)
	}
	if got := le.Uint32(zp[offCode32Start:]); uint64(got) != kernel.mem {
		t.Errorf("code32_start = %#x, want the load address %#x", got, kernel.mem)
	}
	if got := le.Uint32(zp[offRamdiskImage:]); uint64(got) != initrdSeg.mem {
		t.Errorf("ramdisk_image = %#x, want %#x", got, initrdSeg.mem)
	}
	if got := le.Uint32(zp[offRamdiskSize:]); int(got) != len(initrd) {
		t.Errorf("ramdisk_size = %d, want %d", got, len(initrd))
	}
	for _, off := range []int{offExtRamdiskImage, offExtRamdiskSize, offExtCmdLinePtr} {
		if got := le.Uint32(zp[off:]); got != 0 {
			t.Errorf("ext field at %#x = %#x, want 0 below 4 GiB", off, got)
		}
	}
	if zp[offSentinel] != 0 {
		t.Errorf("sentinel = %#x, want 0", zp[offSentinel])
	}
	if zp[offTypeOfLoader] != loaderUnknown {
		t.Errorf("type_of_loader = %#x, want 0xff", zp[offTypeOfLoader])
	}
	if zp[offLoadFlags] != loadedHigh {
		t.Errorf("loadflags = %#x, want LOADED_HIGH without CAN_USE_HEAP", zp[offLoadFlags])
	}
	if got := le.Uint64(zp[0x250:]); got != 0 {
		t.Errorf("setup_data = %#x, want 0 from the new image's header", got)
	}
	if !bytes.Equal(zp[:0x1e0], bootParams[:0x1e0]) {
		t.Errorf("zero page before the setup header (screen_info, acpi_rsdp_addr, ...) changed")
	}
	if !bytes.Equal(zp[0x26c:], bootParams[0x26c:]) {
		t.Errorf("zero page after the setup header (e820 table, ...) changed")
	}
	if !bytes.Equal(zp[offVersion:offTypeOfLoader], image[offVersion:offTypeOfLoader]) || !bytes.Equal(zp[offInitrdAddrMax:0x26c], image[offInitrdAddrMax:0x26c]) {
		t.Errorf("setup header fields from the image were not copied")
	}
}

func TestPlanKexecLoadDebianKernels(t *testing.T) {
	for _, path := range testKernels(t) {
		t.Run(filepath.Base(filepath.Dir(path)), func(t *testing.T) {
			image, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			h, err := parseSetupHeader(image)
			if err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			// startup_32 and startup_64 of arch/x86/boot/compressed/head_64.S
			// both begin with cld; cli. Finding them shows that the loader
			// cuts the protected-mode part and finds the 64-bit entry right.
			code := image[h.setupSize():]
			if !bytes.Equal(code[:2], []byte{0xfc, 0xfa}) || !bytes.Equal(code[entry64Offset:entry64Offset+2], []byte{0xfc, 0xfa}) {
				t.Errorf("%s: protected-mode code starts %x and has %x at +0x200, want cld; cli (fc fa) at both", path, code[:2], code[entry64Offset:entry64Offset+2])
			}

			img, err := planKexecLoad(image, []byte("initrd"), "console=ttyS0", syntheticBootParams(), qemuRAM)
			if err != nil {
				t.Fatal(err)
			}
			checkLayout(t, img, qemuRAM)
			kernel := img.segments[0]
			if kernel.mem%uint64(h.kernelAlignment) != 0 || kernel.mem < h.prefAddress {
				t.Errorf("kernel at %#x: want kernel_alignment %#x and at least pref_address %#x", kernel.mem, h.kernelAlignment, h.prefAddress)
			}
			if kernel.memSize < uint64(h.initSize) {
				t.Errorf("kernel area %#x is smaller than init_size %#x", kernel.memSize, h.initSize)
			}
			zp := img.segments[2].data
			if !bytes.Equal(zp[offSetupHeader:offTypeOfLoader], image[offSetupHeader:offTypeOfLoader]) {
				t.Errorf("zero page does not carry the image's setup header")
			}
		})
	}
}

func TestPlanKexecLoadBelowPrefAddress(t *testing.T) {
	// RAM ends at 20 MiB, so init_size (8 MiB) does not fit at
	// pref_address (16 MiB) and the kernel must go lower.
	ram := []physRange{{0x100000, 0x1400000}}
	img, err := planKexecLoad(syntheticBzImage(), []byte("initrd"), "", syntheticBootParams(), ram)
	if err != nil {
		t.Fatal(err)
	}
	checkLayout(t, img, ram)
	if got := img.segments[0].mem; got != 0x200000 {
		t.Errorf("kernel at %#x, want the lowest 2 MiB-aligned address 0x200000", got)
	}
}

func TestPlanKexecLoadWithoutInitrd(t *testing.T) {
	img, err := planKexecLoad(syntheticBzImage(), nil, "quiet", syntheticBootParams(), qemuRAM)
	if err != nil {
		t.Fatal(err)
	}
	checkLayout(t, img, qemuRAM)
	if len(img.segments) != 3 {
		t.Fatalf("%d segments, want kernel, zero page and purgatory", len(img.segments))
	}
	zp := img.segments[1].data
	if le := binary.LittleEndian; le.Uint32(zp[offRamdiskImage:]) != 0 || le.Uint32(zp[offRamdiskSize:]) != 0 {
		t.Errorf("ramdisk fields set without an initrd")
	}
}

func TestPlanKexecLoadRejects(t *testing.T) {
	le := binary.LittleEndian
	with := func(change func(img []byte)) []byte {
		img := syntheticBzImage()
		change(img)
		return img
	}
	cases := []struct {
		name       string
		image      []byte
		cmdline    string
		bootParams []byte
		ram        []physRange
		want       error
		message    string
	}{
		{name: "short", image: make([]byte, 100), want: ErrUnsupportedKernel, message: "too short"},
		{name: "elf", image: with(func(img []byte) { copy(img[offHeaderMagic:], "\x7fELF") }), want: ErrUnsupportedKernel, message: "not an ELF vmlinux"},
		{name: "boot-flag", image: with(func(img []byte) { img[offBootFlag] = 0 }), want: ErrUnsupportedKernel, message: "0xAA55"},
		{name: "protocol-2.11", image: with(func(img []byte) { le.PutUint16(img[offVersion:], 0x020b) }), want: ErrUnsupportedKernel, message: "boot protocol 2.11"},
		{name: "32-bit", image: with(func(img []byte) { le.PutUint16(img[offXLoadFlags:], 0) }), want: ErrUnsupportedKernel, message: "XLF_KERNEL_64"},
		{name: "not-relocatable", image: with(func(img []byte) { img[offRelocatable] = 0 }), want: ErrUnsupportedKernel, message: "CONFIG_RELOCATABLE"},
		{name: "not-loaded-high", image: with(func(img []byte) { img[offLoadFlags] = 0 }), want: ErrUnsupportedKernel, message: "LOADED_HIGH"},
		{name: "odd-alignment", image: with(func(img []byte) { le.PutUint32(img[offKernelAlignment:], 0x300000) }), want: ErrUnsupportedKernel, message: "kernel_alignment"},
		{name: "setup-only", image: syntheticBzImage()[:4*512], want: ErrUnsupportedKernel, message: "setup sectors"},
		{name: "long-cmdline", image: syntheticBzImage(), cmdline: strings.Repeat("a", 2048), want: ErrUnsupportedKernel, message: "cmdline_size of 2047"},
		{name: "nul-in-cmdline", image: syntheticBzImage(), cmdline: "a\x00b", message: "NUL"},
		{name: "short-boot-params", image: syntheticBzImage(), bootParams: make([]byte, 512), message: "512 bytes"},
		{name: "ram-too-small", image: syntheticBzImage(), ram: []physRange{{0x100000, 0x600000}}, want: ErrNoRoom, message: "init_size"},
		{name: "no-room-for-initrd", image: syntheticBzImage(), ram: []physRange{{0x1000000, 0x1800000 + pageSize}}, want: ErrNoRoom, message: "initrd"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			bootParams, ram := c.bootParams, c.ram
			if bootParams == nil {
				bootParams = syntheticBootParams()
			}
			if ram == nil {
				ram = qemuRAM
			}
			img, err := planKexecLoad(c.image, bytes.Repeat([]byte{1}, 2*pageSize), c.cmdline, bootParams, ram)
			if err == nil {
				t.Fatalf("planKexecLoad succeeded with %d segments, want an error", len(img.segments))
			}
			if c.want != nil && !errors.Is(err, c.want) {
				t.Errorf("error %v, want %v", err, c.want)
			}
			if !strings.Contains(err.Error(), c.message) {
				t.Errorf("error %q does not mention %q", err, c.message)
			}
		})
	}
}

func TestFreeRangesMergeAndTake(t *testing.T) {
	// Overlapping, touching and unaligned ranges, as a firmware map may
	// list them.
	free := newFreeRanges([]physRange{
		{0x300000, 0x400000}, {0, 0x9fc00}, {0x100000, 0x200800}, {0x200000, 0x300000}, {0x500000, 0x500fff},
	}, lowMemoryLimit)
	want := freeRanges{{0x100000, 0x400000}}
	if len(free) != 1 || free[0] != want[0] {
		t.Fatalf("free ranges %v, want %v", free, want)
	}
	free.take(0x200000, 0x201000)
	want = freeRanges{{0x100000, 0x200000}, {0x201000, 0x400000}}
	if len(free) != 2 || free[0] != want[0] || free[1] != want[1] {
		t.Errorf("after take: %v, want %v", free, want)
	}
	seg, err := free.placeTop("x", make([]byte, 10), 0x300000)
	if err != nil {
		t.Fatal(err)
	}
	if seg.mem != 0x2ff000 || seg.memSize != pageSize {
		t.Errorf("placeTop below 0x300000 put %d bytes at %#x, want one page at 0x2ff000", seg.memSize, seg.mem)
	}
}

func TestE820RAM(t *testing.T) {
	ram, err := e820RAM(syntheticBootParams())
	if err != nil {
		t.Fatal(err)
	}
	want := []physRange{{0, 0x9fc00}, {0x100000, 0x3ffe0000}}
	if len(ram) != len(want) || ram[0] != want[0] || ram[1] != want[1] {
		t.Errorf("e820 RAM = %v, want %v", ram, want)
	}

	bad := syntheticBootParams()
	bad[offE820Entries] = 200
	if _, err := e820RAM(bad); err == nil {
		t.Errorf("e820 table with 200 entries accepted, want an error (the table has 128)")
	}
}

// writeMemmap writes a fake /sys/firmware/memmap with the given entries.
func writeMemmap(t *testing.T, entries [][3]string) string {
	t.Helper()
	dir := t.TempDir()
	for i, e := range entries {
		d := filepath.Join(dir, string(rune('0'+i)))
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		for j, name := range []string{"start", "end", "type"} {
			if err := os.WriteFile(filepath.Join(d, name), []byte(e[j]+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}

func TestSystemRAMFirmwareMemmap(t *testing.T) {
	dir := writeMemmap(t, [][3]string{
		{"0x0", "0x9fbff", "System RAM"},
		{"0x9fc00", "0x9ffff", "Reserved"},
		{"0x100000", "0x3ffdffff", "System RAM"},
		{"0xfeffc000", "0xfeffffff", "Reserved"},
	})
	ram, err := systemRAM(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(ram) != 2 || ram[0] != qemuRAM[0] || ram[1] != qemuRAM[1] {
		t.Errorf("System RAM = %v, want %v", ram, qemuRAM)
	}

	bad := writeMemmap(t, [][3]string{{"0x100000", "zz", "System RAM"}})
	if _, err := systemRAM(bad, nil); err == nil || !strings.Contains(err.Error(), `"zz"`) {
		t.Errorf("invalid end address: %v, want an error naming it", err)
	}
	none := writeMemmap(t, [][3]string{{"0x0", "0xfff", "Reserved"}})
	if _, err := systemRAM(none, nil); err == nil {
		t.Errorf("memory map without System RAM accepted")
	}
}

func TestSystemRAMFallsBackToE820(t *testing.T) {
	ram, err := systemRAM(filepath.Join(t.TempDir(), "missing"), syntheticBootParams())
	if err != nil {
		t.Fatal(err)
	}
	if len(ram) != 2 || ram[1] != qemuRAM[1] {
		t.Errorf("RAM from the e820 table = %v, want %v", ram, qemuRAM)
	}
}

// FuzzPlanKexecLoad feeds arbitrary kernel images and command lines to the
// loader's planning step, which parses an untrusted file: it must return an
// error or a layout that passes checkLayout, never panic.
func FuzzPlanKexecLoad(f *testing.F) {
	f.Add(syntheticBzImage(), "console=ttyS0")
	f.Add(syntheticBzImage()[:600], "")
	f.Add([]byte("kernel"), "ima_policy=tcb")
	bootParams := syntheticBootParams()
	f.Fuzz(func(t *testing.T, image []byte, cmdline string) {
		img, err := planKexecLoad(image, []byte("initrd"), cmdline, bootParams, qemuRAM)
		if err != nil {
			return
		}
		checkLayout(t, img, qemuRAM)
	})
}
