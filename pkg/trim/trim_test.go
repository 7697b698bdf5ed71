package trim

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/imashard/imashard/internal/vmtest"
	"github.com/imashard/imashard/pkg/imalog"
	"github.com/imashard/imashard/pkg/pcr"
	"github.com/imashard/imashard/pkg/securityfs"
	"github.com/imashard/imashard/pkg/tpm"
)

func TestMain(m *testing.M) {
	if vmtest.InGuest() {
		vmtest.GuestMain(m)
	}
	os.Exit(m.Run())
}

// splitSHA1 splits a little-endian SHA-1 binary list with non-legacy
// templates into raw entries.
func splitSHA1(data []byte) ([][]byte, error) {
	var entries [][]byte
	for off := 0; off < len(data); {
		start := off
		if off+28 > len(data) {
			return nil, fmt.Errorf("entry %d truncated at byte %d", len(entries), off)
		}
		off += 24
		nameLen := int(binary.LittleEndian.Uint32(data[off:]))
		off += 4
		if nameLen > 255 || off+nameLen+4 > len(data) {
			return nil, fmt.Errorf("entry %d: invalid name length %d at byte %d", len(entries), nameLen, off-4)
		}
		off += nameLen
		dataLen := int(binary.LittleEndian.Uint32(data[off:]))
		off += 4
		if off+dataLen > len(data) {
			return nil, fmt.Errorf("entry %d: template data length %d past the end", len(entries), dataLen)
		}
		off += dataLen
		entries = append(entries, data[start:off])
	}
	return entries, nil
}

func entry(name string) []byte {
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, uint32(10))
	b.Write(bytes.Repeat([]byte{0xAB}, 20))
	binary.Write(&b, binary.LittleEndian, uint32(len("ima-ng")))
	b.WriteString("ima-ng")
	binary.Write(&b, binary.LittleEndian, uint32(len(name)))
	b.WriteString(name)
	return b.Bytes()
}

func entries(names ...string) [][]byte {
	var out [][]byte
	for _, n := range names {
		out = append(out, entry(n))
	}
	return out
}

func TestStateRoundTrip(t *testing.T) {
	dir := t.TempDir()
	st, err := LoadState(dir)
	if err != nil || st.LiveStart != 0 || st.Pending != nil {
		t.Fatalf("LoadState(empty dir) = %+v, %v; want live start 0", st, err)
	}
	st.LiveStart = 42
	st.Carry = 2
	st.CarryFile = "carry-42.bin"
	if err := SaveState(dir, st); err != nil {
		t.Fatal(err)
	}
	got, err := LoadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.LiveStart != 42 || got.Carry != 2 || got.KernelStart() != 44 {
		t.Fatalf("LoadState = %+v, want live start 42, carry 2", got)
	}
	leftovers, _ := filepath.Glob(filepath.Join(dir, ".*tmp*"))
	if len(leftovers) != 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}
}

func TestLoadStateRejectsBadFiles(t *testing.T) {
	cases := map[string]string{
		"not json":       "{",
		"future version": `{"version": 9, "live_start": 1}`,
		"negative start": `{"version": 1, "live_start": -1}`,
		"carry no file":  `{"version": 1, "live_start": 1, "carry": 3}`,
		// A trim deletes a carry file once the shards hold its entries,
		// so the name must not be able to point at the state or a shard.
		"carry names state": `{"version": 1, "live_start": 1, "carry": 3, "carry_file": "live-state.json"}`,
		"carry names shard": `{"version": 1, "live_start": 1, "carry": 3, "carry_file": "shard-000001.bin"}`,
		"pending empty":     `{"version": 1, "live_start": 1, "pending": {"count": 0, "list_entries": 0, "after": {}}}`,
	}
	for name, content := range cases {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, StateFile), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadState(dir); err == nil {
			t.Errorf("%s: LoadState accepted %s", name, content)
		}
	}
}

func TestResolvePending(t *testing.T) {
	list := entries("a", "b", "c", "d")
	pendingState := func() *State {
		after := &State{LiveStart: 12}
		return &State{LiveStart: 10, Pending: &PendingTrim{
			Count: 2, ListEntries: 4,
			HeadDigest: digestEntries(list[:2]), KeptDigest: digestEntries(list[2:]),
			After: after,
		}}
	}

	t.Run("not deleted", func(t *testing.T) {
		dir := t.TempDir()
		st := pendingState()
		live := append(entries("a", "b", "c", "d"), entry("e"))
		if err := resolvePending(dir, st, kernelView{current: live}, undecidable); err != nil {
			t.Fatal(err)
		}
		if st.LiveStart != 10 || st.Pending != nil {
			t.Fatalf("state = %+v, want live start 10 and no pending trim", st)
		}
	})
	t.Run("deleted", func(t *testing.T) {
		dir := t.TempDir()
		st := pendingState()
		live := entries("c", "d", "e")
		if err := resolvePending(dir, st, kernelView{current: live}, undecidable); err != nil {
			t.Fatal(err)
		}
		if st.LiveStart != 12 || st.Pending != nil {
			t.Fatalf("state = %+v, want live start 12", st)
		}
		saved, err := LoadState(dir)
		if err != nil || saved.LiveStart != 12 {
			t.Fatalf("saved state = %+v, %v; want live start 12", saved, err)
		}
	})
	t.Run("staged", func(t *testing.T) {
		staged := entries("a", "b")
		mk := func() *State {
			return &State{LiveStart: 0, Pending: &PendingTrim{
				Count: 2, ListEntries: 2, Staged: true,
				HeadDigest: digestEntries(staged), KeptDigest: digestEntries(nil),
				After: &State{LiveStart: 2},
			}}
		}
		st := mk()
		if err := resolvePending(t.TempDir(), st, kernelView{staged: entries("a", "b"), current: entries("c")}, undecidable); err != nil || st.LiveStart != 0 {
			t.Errorf("still staged: state %+v, %v; want live start 0", st, err)
		}
		st = mk()
		if err := resolvePending(t.TempDir(), st, kernelView{current: entries("a", "b")}, undecidable); err != nil || st.LiveStart != 2 {
			t.Errorf("staged list empty: state %+v, %v; want live start 2", st, err)
		}
	})
	t.Run("changed by others", func(t *testing.T) {
		st := pendingState()
		err := resolvePending(t.TempDir(), st, kernelView{current: entries("x", "y")}, undecidable)
		if !errors.Is(err, ErrMismatch) {
			t.Fatalf("resolvePending = %v, want ErrMismatch", err)
		}
	})
	t.Run("ambiguous", func(t *testing.T) {
		same := entries("a", "a")
		st := &State{LiveStart: 0, Pending: &PendingTrim{
			Count: 1, ListEntries: 2,
			HeadDigest: digestEntries(same[:1]), KeptDigest: digestEntries(same[1:]),
			After: &State{LiveStart: 1},
		}}
		called := false
		decide := func() (bool, error) {
			called = true
			return false, ErrAmbiguous
		}
		err := resolvePending(t.TempDir(), st, kernelView{current: entries("a", "a")}, decide)
		if !called {
			t.Error("resolvePending did not ask decide about a list that fits both outcomes")
		}
		if !errors.Is(err, ErrAmbiguous) {
			t.Fatalf("resolvePending = %v, want ErrAmbiguous", err)
		}
	})
}

// undecidable is the decide function of resolvePending cases whose list
// decides by itself.
func undecidable() (bool, error) {
	return false, errors.New("decide called for a list that fits one outcome only")
}

func TestCompareCovered(t *testing.T) {
	covered := Covered{Start: 5, Raw: entries("a", "b", "c")}
	if err := compareCovered(entries("b", "c"), 6, 2, covered); err != nil {
		t.Errorf("matching entries: %v", err)
	}
	if err := compareCovered(entries("b", "x"), 6, 2, covered); !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "history index 7") {
		t.Errorf("changed entry: %v, want ErrMismatch at history index 7", err)
	}
	if err := compareCovered(entries("c", "d"), 7, 2, covered); !errors.Is(err, ErrGap) {
		t.Errorf("past the shards: %v, want ErrGap", err)
	}
}

// TestInKernel boots the custom kernel with this package's tests as /init.
func TestInKernel(t *testing.T) {
	vmtest.RunGuestTests(t, vmtest.Options{
		Kernel:  vmtest.Kernel(t),
		Package: ".",
		Dir:     ".",
		Args:    []string{"-test.v", "-test.run=^TestGuest"},
	}, "TestGuestTrimRounds", "TestGuestTrimMismatch", "TestGuestTrimStagedCarry", "TestGuestTrimCrash",
		"TestGuestTrimCarryCrash", "TestGuestTrimAmbiguous", "TestGuestTrimNonRoot", "TestGuestTrimConcurrentStaged")
}

// guest is one chain directory against the live kernel list. Its history
// starts at the list's first entry when the test begins.
type guest struct {
	t       *testing.T
	dir     string
	fs      *securityfs.FS
	history [][]byte // every entry seen so far, by history index
	seq     int
}

func newGuest(t *testing.T) *guest {
	t.Helper()
	if !vmtest.InGuest() && os.Getenv("IMASHARD_GUEST_CHILD") == "" {
		t.Skip("runs inside the custom kernel; TestInKernel starts it")
	}
	fs, err := securityfs.Open("")
	if err != nil {
		t.Fatal(err)
	}
	return &guest{t: t, dir: t.TempDir(), fs: fs}
}

func (g *guest) measure(n int) {
	g.t.Helper()
	for i := 0; i < n; i++ {
		g.seq++
		p := fmt.Sprintf("/tmp/%s-%d", filepath.Base(g.dir), g.seq)
		if err := os.WriteFile(p, []byte(p), 0o644); err != nil {
			g.t.Fatal(err)
		}
		if _, err := os.ReadFile(p); err != nil {
			g.t.Fatal(err)
		}
	}
}

// live reads the live part of the history and checks that it continues
// the history seen so far, returning the whole history.
func (g *guest) live() [][]byte {
	g.t.Helper()
	l, err := ReadLive(g.dir, g.fs, pcr.SHA1)
	if err != nil {
		g.t.Fatal(err)
	}
	got, err := splitSHA1(l.Data)
	if err != nil {
		g.t.Fatal(err)
	}
	if l.Start > int64(len(g.history)) {
		g.t.Fatalf("live start %d is past the %d entries seen: entries lost", l.Start, len(g.history))
	}
	for i, e := range got {
		idx := l.Start + int64(i)
		if idx < int64(len(g.history)) && !bytes.Equal(g.history[idx], e) {
			g.t.Fatalf("live entry at history index %d differs from the one seen before: duplicated or lost entries", idx)
		}
		if idx >= int64(len(g.history)) {
			g.history = append(g.history, e)
		}
	}
	if want := int64(len(g.history)) - l.Start; int64(len(got)) != want {
		g.t.Fatalf("live part has %d entries from index %d, history has %d", len(got), l.Start, len(g.history))
	}
	return g.history
}

// shards returns the first n history entries as what durable shards hold.
func (g *guest) shards(n int) Covered {
	return Covered{Start: 0, Raw: g.history[:n]}
}

func (g *guest) opts(staged bool) Options {
	return Options{Dir: g.dir, FS: g.fs, Alg: pcr.SHA1, Split: SplitWith(imalog.Options{}), Staged: staged}
}

func TestGuestTrimRounds(t *testing.T) {
	g := newGuest(t)
	for round := 0; round < 3; round++ {
		g.measure(5)
		h := g.live()
		covered := g.shards(len(h) - 2) // the last two stay for the next round

		res, err := Trim(g.opts(false), covered)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if res.LiveStart != covered.End() {
			t.Fatalf("round %d: live start %d, want %d", round, res.LiveStart, covered.End())
		}
		count, err := g.fs.Count()
		if err != nil {
			t.Fatal(err)
		}
		if count < 2 || count > 4 {
			t.Errorf("round %d: kernel count %d after trim, want the 2 uncovered entries plus at most a few new", round, count)
		}
		g.live()
	}

	// A second trim with the same shards deletes nothing.
	h := g.live()
	st, _ := LoadState(g.dir)
	res, err := Trim(g.opts(false), g.shards(int(st.LiveStart)))
	if err != nil || res.Deleted != 0 {
		t.Fatalf("repeated trim = %+v, %v; want nothing deleted", res, err)
	}
	if len(g.live()) != len(h) {
		t.Fatal("repeated trim changed the history")
	}
}

func TestGuestTrimMismatch(t *testing.T) {
	g := newGuest(t)
	g.measure(3)
	h := g.live()
	forged := append([][]byte{}, h...)
	forged[1] = append([]byte{}, forged[1]...)
	forged[1][10] ^= 0xFF
	before, _ := g.fs.Count()

	_, err := Trim(g.opts(false), Covered{Start: 0, Raw: forged})
	if !errors.Is(err, ErrMismatch) {
		t.Fatalf("Trim with a changed shard entry = %v, want ErrMismatch", err)
	}
	after, _ := g.fs.Count()
	if after < before {
		t.Fatalf("kernel count went from %d to %d after a rejected trim", before, after)
	}
	st, _ := LoadState(g.dir)
	if st.LiveStart != 0 || st.Pending != nil {
		t.Fatalf("state after a rejected trim = %+v", st)
	}
}

func TestGuestTrimStagedCarry(t *testing.T) {
	g := newGuest(t)
	g.measure(4)
	h := g.live()
	covered := g.shards(len(h) - 3)

	res, err := Trim(g.opts(true), covered)
	if err != nil {
		t.Fatal(err)
	}
	if res.Carried < 3 {
		t.Errorf("carried %d entries, want the 3 uncovered staged entries at least", res.Carried)
	}
	if res.LiveStart != covered.End() || res.KernelStart != covered.End()+res.Carried {
		t.Errorf("result %+v: live start want %d", res, covered.End())
	}
	// Writing the carry and state files adds measurements, so the kernel
	// list is not empty, but it holds none of the staged entries.
	count, _ := g.fs.Count()
	if count >= int64(len(h)) {
		t.Errorf("kernel count %d after a staged trim of %d entries", count, len(h))
	}
	h = g.live()

	// Once shards hold the carried entries, the carry file goes away.
	g.measure(2)
	h = g.live()
	res, err = Trim(g.opts(true), g.shards(len(h)))
	if err != nil {
		t.Fatal(err)
	}
	if res.CarryUsed == 0 {
		t.Errorf("result %+v: carried entries not dropped", res)
	}
	st, _ := LoadState(g.dir)
	if st.LiveStart != int64(len(h)) {
		t.Errorf("state %+v: live start want %d, the end of the shards", st, len(h))
	}
	g.live()
}

// TestGuestTrimCrash kills a trimming child process at each step and
// checks that the next Trim repairs the state without losing or repeating
// an entry.
func TestGuestTrimCrash(t *testing.T) {
	for _, step := range []string{"intent-recorded", "deleted"} {
		for _, staged := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/staged=%v", step, staged), func(t *testing.T) {
				g := newGuest(t)
				g.measure(3)
				h := g.live()
				covered := g.shards(len(h) - 1)
				if err := saveCovered(g.dir, covered); err != nil {
					t.Fatal(err)
				}

				runCrashChild(t, g.dir, step, staged)

				st, err := LoadState(g.dir)
				if err != nil {
					t.Fatal(err)
				}
				if st.Pending == nil {
					t.Fatalf("state after a crash at %s has no pending trim: %+v", step, st)
				}
				if _, err := ReadLive(g.dir, g.fs, pcr.SHA1); err == nil {
					t.Error("ReadLive with a pending trim succeeded, want an error")
				}

				res, err := Trim(g.opts(staged), covered)
				if err != nil {
					t.Fatal(err)
				}
				if !res.Recovered {
					t.Error("Trim did not report the recovery")
				}
				if res.LiveStart != covered.End() {
					t.Errorf("live start %d after recovery, want %d", res.LiveStart, covered.End())
				}
				g.live()
			})
		}
	}
}

// TestGuestTrimCarryCrash kills a staged trim at each step that writes,
// rewrites or drops a carry file, and checks that the next Trim leaves
// the state, the carry file and the kernel list agreeing, with no entry
// lost or repeated.
func TestGuestTrimCarryCrash(t *testing.T) {
	for _, step := range []string{"carry-written", "carry-rewritten", "carry-dropped"} {
		t.Run(step, func(t *testing.T) {
			g := newGuest(t)
			g.measure(3)
			h := g.live()
			covered := g.shards(len(h) - 2)
			if step != "carry-written" {
				// A first staged trim carries the uncovered entries. The
				// child then finds the shards holding the first carried
				// entry (the carry file is rewritten) or all of them.
				res, err := Trim(g.opts(true), covered)
				if err != nil {
					t.Fatal(err)
				}
				if res.Carried < 2 {
					t.Fatalf("first staged trim carried %d entries, want at least 2", res.Carried)
				}
				g.live()
				st, err := LoadState(g.dir)
				if err != nil {
					t.Fatal(err)
				}
				end := st.LiveStart + 1
				if step == "carry-dropped" {
					end = st.KernelStart()
				}
				covered = g.shards(int(end))
			}
			if err := saveCovered(g.dir, covered); err != nil {
				t.Fatal(err)
			}

			runCrashChild(t, g.dir, step, true)

			if _, err := Trim(g.opts(true), covered); err != nil {
				t.Fatalf("Trim after a crash at %s: %v", step, err)
			}
			st, err := LoadState(g.dir)
			if err != nil {
				t.Fatal(err)
			}
			if st.Pending != nil || st.LiveStart != covered.End() {
				t.Errorf("state after recovery = %+v, want live start %d and no pending trim", st, covered.End())
			}
			files, _ := filepath.Glob(filepath.Join(g.dir, "carry-*.bin"))
			want := 0
			if st.CarryFile != "" {
				want = 1
			}
			if len(files) != want || (want == 1 && filepath.Base(files[0]) != st.CarryFile) {
				t.Errorf("carry files %v, want only the one the state names (%q)", files, st.CarryFile)
			}
			g.live()
		})
	}
}

// TestGuestTrimConcurrentStaged runs a second staged trim to completion
// after a first one has read the state file but before it opens a list.
// The second trim carries entries to a carry file, and the first must
// then work from the state the second recorded: removing that carry file
// as unused would lose entries the kernel no longer has.
func TestGuestTrimConcurrentStaged(t *testing.T) {
	g := newGuest(t)
	g.measure(3)
	h := g.live()
	covered := g.shards(len(h) - 2)

	var second *Result
	var secondErr error
	ran := false
	crashPoint = func(step string) {
		if step != "state-loaded" || ran {
			return
		}
		ran = true
		second, secondErr = Trim(g.opts(true), covered)
	}
	t.Cleanup(func() { crashPoint = func(string) {} })

	first, err := Trim(g.opts(true), covered)
	if !ran {
		t.Fatal("the second trim did not run: Trim has no state-loaded step")
	}
	if secondErr != nil {
		t.Fatalf("second trim: %v", secondErr)
	}
	if second.Carried < 2 {
		t.Fatalf("second trim carried %d entries, want the 2 uncovered staged entries at least", second.Carried)
	}
	if err != nil {
		t.Errorf("first trim after the second finished: %v", err)
	} else if first.Deleted != 0 {
		t.Errorf("first trim deleted %d entries after the second trimmed everything the shards hold", first.Deleted)
	}

	st, err := LoadState(g.dir)
	if err != nil {
		t.Fatal(err)
	}
	if st.CarryFile == "" {
		t.Fatalf("state %+v names no carry file after the second trim carried entries", st)
	}
	if _, err := os.Stat(filepath.Join(g.dir, st.CarryFile)); err != nil {
		t.Fatalf("carry file the state names: %v (its entries are lost)", err)
	}
	g.live()
}

// TestGuestTrimAmbiguous interrupts count trims of the first entry of a
// list that holds two identical violation entries: it starts with the
// same entry whether or not the kernel deleted the first. (The kernel
// adds no measurement whose template digest it already has, but it adds
// every violation.) Replaying both outcomes to the real TPM's PCRs must
// find the one that happened.
func TestGuestTrimAmbiguous(t *testing.T) {
	for _, step := range []string{"intent-recorded", "deleted"} {
		t.Run(step, func(t *testing.T) {
			g := newGuest(t)
			// The chain directory on tmpfs, which the tcb policy does not
			// measure, keeps state file writes out of the list.
			if err := syscall.Mount("tmpfs", g.dir, "tmpfs", 0, ""); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { syscall.Unmount(g.dir, 0) })
			tp, err := tpm.Open("")
			if err != nil {
				t.Fatal(err)
			}
			defer tp.Close()
			banks, err := tp.Banks()
			if err != nil {
				t.Fatal(err)
			}

			// Reading a measured file that is open for writing adds an
			// open_writers violation for its path. A new file at the same
			// path repeats it byte for byte; its content, measured the
			// first time only, repeats nothing.
			path := filepath.Join("/tmp", "violation-"+filepath.Base(g.dir))
			violate := func() {
				t.Helper()
				os.Remove(path)
				w, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o644)
				if err != nil {
					t.Fatal(err)
				}
				defer w.Close()
				if _, err := w.WriteString("v"); err != nil {
					t.Fatal(err)
				}
				if _, err := os.ReadFile(path); err != nil {
					t.Fatal(err)
				}
			}
			violate()

			// Delete everything seen so far, then anchor the history at
			// PCR values read between two equal reads of the list.
			h := g.live()
			if _, err := Trim(g.opts(false), g.shards(len(h))); err != nil {
				t.Fatal(err)
			}
			var anchor *Anchor
			for attempt := 0; attempt < 5 && anchor == nil; attempt++ {
				before := len(g.live())
				values, err := tp.ReadPCRs(banks, []int{10})
				if err != nil {
					t.Fatal(err)
				}
				if after := len(g.live()); after == before {
					anchor = &Anchor{Index: int64(after), Values: values}
				}
			}
			if anchor == nil {
				t.Fatal("the list kept growing while the PCRs were read")
			}

			violate()
			violate()
			h = g.live()
			ks := anchor.Index
			if st, err := LoadState(g.dir); err != nil || st.KernelStart() != ks {
				t.Fatalf("state %+v, %v: the kernel list must start at the anchor %d, with no other entry in between", st, err, ks)
			}
			if int64(len(h)) != ks+2 || !bytes.Equal(h[ks], h[ks+1]) {
				t.Fatalf("history has %d entries after the anchor at %d, want two identical violations", int64(len(h))-ks, ks)
			}
			covered := g.shards(int(ks + 1))
			covered.Anchor = anchor
			if err := saveCovered(g.dir, covered); err != nil {
				t.Fatal(err)
			}

			runCrashChild(t, g.dir, step, false)

			if step == "deleted" {
				// The kept violation alone would show the deletion; one more
				// makes the list start like the undeleted one again.
				violate()
			}
			// Without the TPM the list alone cannot decide.
			if _, err := Trim(g.opts(false), covered); !errors.Is(err, ErrAmbiguous) {
				t.Fatalf("Trim without a TPM after a crash at %s = %v, want ErrAmbiguous", step, err)
			}
			opts := g.opts(false)
			opts.ReadPCRs = tp.ReadPCRs
			res, err := Trim(opts, covered)
			if err != nil {
				t.Fatalf("Trim with the TPM after a crash at %s: %v", step, err)
			}
			if !res.Recovered || res.LiveStart != ks+1 {
				t.Errorf("result %+v, want a recovery and live start %d", res, ks+1)
			}
			// Only when the child died before deleting does this Trim
			// delete the entry itself.
			wantDeleted := int64(0)
			if step == "intent-recorded" {
				wantDeleted = 1
			}
			if res.Deleted != wantDeleted {
				t.Errorf("recovery Trim deleted %d entries, want %d", res.Deleted, wantDeleted)
			}
			g.live()
		})
	}
}

// TestGuestTrimNonRoot runs a trim as uid 65534, which lacks
// CAP_SYS_ADMIN, and expects ErrPermission naming the capability.
func TestGuestTrimNonRoot(t *testing.T) {
	g := newGuest(t)
	if err := os.Chmod(g.dir, 0o777); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/init", "-test.run=^TestGuestChildTrimNonRoot$", "-test.v")
	cmd.Env = append(os.Environ(), "IMASHARD_GUEST_CHILD=1", "NONROOT_DIR="+g.dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("non-root child: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "--- PASS: TestGuestChildTrimNonRoot") {
		t.Fatalf("non-root child did not pass:\n%s", out)
	}
}

// TestGuestChildTrimNonRoot runs as uid 65534, started by
// TestGuestTrimNonRoot.
func TestGuestChildTrimNonRoot(t *testing.T) {
	dir := os.Getenv("NONROOT_DIR")
	if dir == "" || os.Getuid() == 0 {
		t.Skip("child of TestGuestTrimNonRoot only")
	}
	fs, err := securityfs.Open("")
	if err != nil {
		t.Fatal(err)
	}
	_, err = Trim(Options{Dir: dir, FS: fs, Alg: pcr.SHA1, Split: SplitWith(imalog.Options{})}, Covered{})
	if !errors.Is(err, securityfs.ErrPermission) || !strings.Contains(err.Error(), "CAP_SYS_ADMIN") {
		t.Fatalf("Trim as uid %d = %v, want ErrPermission naming CAP_SYS_ADMIN", os.Getuid(), err)
	}
	t.Logf("Trim as uid %d: %v", os.Getuid(), err)
}

// runCrashChild runs TestGuestChildCrash, which trims the chain in dir
// with the entries saveCovered stored, and checks that it was killed at
// step.
func runCrashChild(t *testing.T, dir, step string, staged bool) {
	t.Helper()
	cmd := exec.Command("/init", "-test.run=^TestGuestChildCrash$", "-test.v")
	cmd.Env = append(os.Environ(), "IMASHARD_GUEST_CHILD=1", "CRASH_DIR="+dir, "CRASH_STEP="+step, fmt.Sprintf("CRASH_STAGED=%v", staged))
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child was not killed at %s: %v\n%s", step, err, out)
	}
}

func saveCovered(dir string, c Covered) error {
	return os.WriteFile(filepath.Join(dir, "covered.bin"), bytes.Join(c.Raw, nil), 0o644)
}

// TestGuestChildCrash trims and is killed at CRASH_STEP; TestGuestTrimCrash
// starts it.
func TestGuestChildCrash(t *testing.T) {
	dir := os.Getenv("CRASH_DIR")
	if dir == "" {
		t.Skip("child of TestGuestTrimCrash only")
	}
	fs, err := securityfs.Open("")
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, "covered.bin"))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := splitSHA1(data)
	if err != nil {
		t.Fatal(err)
	}
	step := os.Getenv("CRASH_STEP")
	crashPoint = func(s string) {
		if s == step {
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
		}
	}
	_, err = Trim(Options{Dir: dir, FS: fs, Alg: pcr.SHA1, Split: SplitWith(imalog.Options{}), Staged: os.Getenv("CRASH_STAGED") == "true"}, Covered{Raw: raw})
	t.Fatalf("Trim returned %v instead of being killed at %s", err, step)
}

func TestSplitWithMatchesTestSplitter(t *testing.T) {
	list := bytes.Join(entries("boot_aggregate", "/init", "/tmp/a"), nil)
	got, err := SplitWith(imalog.Options{})(list)
	if err != nil {
		t.Fatal(err)
	}
	want, err := splitSHA1(list)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("SplitWith found %d entries, want %d", len(got), len(want))
	}
	for i := range got {
		if !bytes.Equal(got[i], want[i]) {
			t.Errorf("entry %d differs", i)
		}
	}
	if _, err := SplitWith(imalog.Options{})(list[:len(list)-3]); err == nil {
		t.Error("SplitWith accepted a truncated list")
	}
}
