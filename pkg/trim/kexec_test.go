package trim

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imashard/imashard/internal/vmtest"
	"github.com/imashard/imashard/pkg/pcr"
	"github.com/imashard/imashard/pkg/securityfs"
)

// TestInKernelKexec boots the custom kernel, leaves entries staged, and
// kexecs with kexec_file_load into the same kernel, which (CONFIG_IMA_KEXEC)
// must hand the staged entries over ahead of the current list.
func TestInKernelKexec(t *testing.T) {
	kernel := vmtest.Kernel(t)
	kernelData, err := os.ReadFile(kernel)
	if err != nil {
		t.Fatal(err)
	}
	vmtest.RunGuestTests(t, vmtest.Options{
		Kernel:  kernel,
		Package: ".",
		Dir:     ".",
		Policy:  "tcb|critical_data",
		Args:    []string{"-test.v", "-test.run=^TestGuestKexecHandover$"},
		Extra:   map[string]vmtest.File{"kernel": {Mode: 0o644, Data: kernelData}},
	}, "TestGuestKexecHandover", "TestGuestAfterKexec")
}

// eventName returns the file or event name of an ima-ng or ima-buf entry.
func eventName(raw []byte) string {
	off := 24
	nameLen := int(binary.LittleEndian.Uint32(raw[off:]))
	off += 4 + nameLen + 4
	if off+4 > len(raw) {
		return ""
	}
	dLen := int(binary.LittleEndian.Uint32(raw[off:]))
	off += 4 + dLen
	if off+4 > len(raw) {
		return ""
	}
	nLen := int(binary.LittleEndian.Uint32(raw[off:]))
	off += 4
	if off+nLen > len(raw) {
		return ""
	}
	return strings.TrimRight(string(raw[off:off+nLen]), "\x00")
}

func templateName(raw []byte) string {
	nameLen := int(binary.LittleEndian.Uint32(raw[24:]))
	return string(raw[28 : 28+nameLen])
}

func TestGuestKexecHandover(t *testing.T) {
	if !vmtest.InGuest() {
		t.Skip("runs inside the custom kernel; TestInKernelKexec starts it")
	}
	if _, err := os.Stat("/expected.bin"); err == nil {
		t.Skip("second boot")
	}
	if _, err := os.Stat("/kernel"); err != nil {
		t.Skip("no /kernel in the initramfs; TestInKernelKexec adds it")
	}
	g := newGuest(t)
	g.measure(3)

	w, err := g.fs.OpenWriter(pcr.SHA1, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Stage(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	g.measure(2)

	live, err := ReadLive(g.dir, g.fs, pcr.SHA1)
	if err != nil {
		t.Fatal(err)
	}
	staged, err := g.fs.ReadStaged(pcr.SHA1)
	if err != nil {
		t.Fatal(err)
	}
	if len(staged) == 0 || !bytes.HasPrefix(live.Data, staged) {
		t.Fatalf("live view (%d bytes) does not start with the %d staged bytes", len(live.Data), len(staged))
	}

	cmdline, err := vmtest.Cmdline()
	if err != nil {
		t.Fatal(err)
	}
	err = vmtest.KexecFileLoad(cmdline, []string{"-test.v", "-test.run=^TestGuestAfterKexec$"},
		map[string]vmtest.File{
			"expected.bin": {Mode: 0o644, Data: live.Data},
			"staged.bin":   {Mode: 0o644, Data: staged},
		})
	if err != nil {
		t.Fatal(err)
	}

	// Loading does not suspend measurement; only executing does.
	count, err := g.fs.Count()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after kexec_file_load: %d current entries, %d staged bytes", count, len(staged))

	// The kernel would still delete now, but Trim rejects the request
	// while an image is loaded and changes neither the lists nor the state.
	h := g.live()
	for _, staged := range []bool{false, true} {
		if _, err := Trim(g.opts(staged), g.shards(len(h))); !errors.Is(err, ErrKexecLoaded) {
			t.Errorf("Trim (staged %v) with a kexec image loaded = %v, want ErrKexecLoaded", staged, err)
		}
	}
	after, err := g.fs.Count()
	if err != nil {
		t.Fatal(err)
	}
	stagedAfter, err := g.fs.ReadStaged(pcr.SHA1)
	if err != nil {
		t.Fatal(err)
	}
	if after < count || !bytes.Equal(stagedAfter, staged) {
		t.Errorf("after the rejected trims: %d current entries (were %d), staged list changed %v", after, count, !bytes.Equal(stagedAfter, staged))
	}
	if _, err := os.Stat(filepath.Join(g.dir, StateFile)); err == nil {
		t.Error("a rejected trim wrote a state file")
	}
}

func TestGuestAfterKexec(t *testing.T) {
	if !vmtest.InGuest() {
		t.Skip("runs inside the custom kernel; TestInKernelKexec starts it")
	}
	expected, err := os.ReadFile("/expected.bin")
	if err != nil {
		t.Skip("first boot")
	}
	fs, err := securityfs.Open("")
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(fs.IMADir, "binary_runtime_measurements"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(data, expected) {
		t.Fatalf("the carried list does not start with the previous kernel's staged and current entries (%d bytes expected)", len(expected))
	}
	staged, err := fs.ReadStaged(pcr.SHA1)
	if err != nil {
		t.Fatal(err)
	}
	if len(staged) != 0 {
		t.Errorf("staged list has %d bytes after kexec, want 0: carried entries arrive in the current list", len(staged))
	}

	all, err := splitSHA1(data)
	if err != nil {
		t.Fatal(err)
	}
	prev, err := splitSHA1(expected)
	if err != nil {
		t.Fatal(err)
	}
	var aggregates []int
	for i, e := range all {
		if eventName(e) == "boot_aggregate" {
			aggregates = append(aggregates, i)
		}
	}
	for i := len(prev); i < len(all); i++ {
		t.Logf("entry %d after the previous kernel's snapshot: template %s, name %q", i, templateName(all[i]), eventName(all[i]))
	}
	if len(aggregates) == 0 || aggregates[len(aggregates)-1] < len(prev) {
		t.Fatalf("no new boot_aggregate after the %d carried entries (boot_aggregate at %v)", len(prev), aggregates)
	}
	t.Logf("carried %d entries; boot_aggregate at %v", len(prev), aggregates)

	// The previous kernel's snapshot takes the place of the final shard.
	next, how, err := Reconcile(&State{Version: stateVersion}, Covered{Start: 0, Raw: prev}, all)
	if err != nil {
		t.Fatal(err)
	}
	if how != Carried || next.LiveStart != 0 {
		t.Errorf("Reconcile = %q from %d, want carried from 0", how, next.LiveStart)
	}
}
