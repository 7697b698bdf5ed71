package trim

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/imashard/imashard/pkg/imalog"
	"github.com/imashard/imashard/pkg/pcr"
	"github.com/imashard/imashard/pkg/securityfs"
)

var (
	// ErrMismatch reports a live entry that differs from the shard entry
	// with the same history index. Nothing is deleted.
	ErrMismatch = errors.New("live IMA list does not match the shards")

	// ErrGap reports a history index that no shard contains although the
	// trim needs it to check the live list.
	ErrGap = errors.New("shards do not cover the start of the live list")

	// ErrAmbiguous reports an interrupted trim whose outcome neither the
	// live list nor a replay to the TPM's PCRs decides.
	ErrAmbiguous = errors.New("cannot tell whether an interrupted trim deleted entries")

	// ErrKexecLoaded reports a trim while a kexec image is loaded. Linux
	// 7.2 still deletes then: it fails with ESTALE or EACCES only once the
	// kexec executes. The next kernel receives only what is left, and the
	// shards packed for it at load time may lack what the trim deletes, so
	// Trim deletes nothing.
	ErrKexecLoaded = errors.New("a kexec image is loaded")
)

// kexecLoadedPath is the sysfs file that reads "1" while a kexec image is
// loaded (kexec_load or kexec_file_load) and not yet executed.
var kexecLoadedPath = "/sys/kernel/kexec_loaded"

// checkNoKexecLoaded returns ErrKexecLoaded while a kexec image is loaded.
// A kernel without CONFIG_KEXEC has no such file and cannot kexec.
func checkNoKexecLoaded() error {
	data, err := os.ReadFile(kexecLoadedPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", kexecLoadedPath, err)
	}
	if strings.TrimSpace(string(data)) == "0" {
		return nil
	}
	return fmt.Errorf("%w (%s is %s): deleting entries now would hand the next kernel a list that the shards packed at load time may not cover; trim after the kexec, or unload the image (kexec -u) first", ErrKexecLoaded, kexecLoadedPath, strings.TrimSpace(string(data)))
}

// crashPoint lets tests act at a step of a trim: end the process, or run
// another trim in between.
var crashPoint = func(step string) {}

// Covered is the part of the history that durable shards hold.
type Covered struct {
	Start int64    // history index of Raw[0]
	Raw   [][]byte // raw entries, encoded as in the binary list of Options.Alg

	// ChainEnd is the history index right after the chain, the last
	// shard's tail included. Zero means End().
	ChainEnd int64

	// Anchor is the last shard's quoted end, or nil. Trim replays from it
	// to decide an interrupted trim that the list cannot decide.
	Anchor *Anchor
}

// chainEnd returns ChainEnd, or End() when it is not set.
func (c Covered) chainEnd() int64 {
	if c.ChainEnd != 0 {
		return c.ChainEnd
	}
	return c.End()
}

// End returns the history index one past the last covered entry.
func (c Covered) End() int64 { return c.Start + int64(len(c.Raw)) }

func (c Covered) at(index int64) ([]byte, bool) {
	if index < c.Start || index >= c.End() {
		return nil, false
	}
	return c.Raw[index-c.Start], true
}

// SplitFunc splits a binary measurement list into raw entries.
type SplitFunc func(list []byte) ([][]byte, error)

// Options configures Trim.
type Options struct {
	Dir   string         // chain directory that holds the shards and the state file
	FS    *securityfs.FS // the live securityfs
	Alg   pcr.Alg        // bank whose binary list the shards' raw entries come from
	Split SplitFunc
	// Staged deletes through the _staged file (stage, compare, delete)
	// instead of writing a count to the measurement file.
	Staged bool

	// ReadPCRs, when set, lets Trim decide an interrupted trim that the
	// list alone cannot decide, by replaying both outcomes to the PCRs.
	ReadPCRs PCRReader
	// LogOptions parses entries for that replay; a zero DigestAlg means Alg.
	LogOptions imalog.Options
}

// Result reports what Trim did.
type Result struct {
	Deleted     int64 // entries deleted from the kernel list
	Carried     int64 // staged entries no shard held yet, now kept in the carry file
	CarryUsed   int64 // carried entries dropped because shards now hold them
	Recovered   bool  // an interrupted earlier trim was resolved first
	LiveStart   int64 // history index of the first entry not yet deleted
	KernelStart int64 // history index of the kernel's first entry
}

// Trim deletes from the kernel list exactly the entries that covered
// holds, never more. It first compares every entry to delete with the shard
// entry of the same history index, and records its intent durably before
// the kernel deletes anything.
func Trim(opts Options, covered Covered) (*Result, error) {
	if err := opts.FS.CheckStaging(); err != nil {
		return nil, err
	}
	if err := securityfs.CheckCapSysAdmin(); err != nil {
		return nil, fmt.Errorf("trim: %w", err)
	}
	if err := checkNoKexecLoaded(); err != nil {
		return nil, fmt.Errorf("trim: %w", err)
	}
	st, err := LoadState(opts.Dir)
	if err != nil {
		return nil, err
	}
	crashPoint("state-loaded")

	// Only one list is opened for writing. The kernel tracks a second
	// write open per thread, and a process killed while holding two leaves
	// every list busy until reboot. The other list is read before, with
	// read opens; a change to it in between shows up as a mismatch.
	before, err := readLists(opts)
	if err != nil {
		return nil, err
	}
	if !opts.Staged && len(before.staged) > 0 && (st.Pending == nil || !st.Pending.Staged) {
		return nil, fmt.Errorf("trim: %d entries are staged ahead of the current list (left by another tool, a crash or the previous kernel); run with --trim-mode staged to delete them", len(before.staged))
	}
	w, err := opts.FS.OpenWriter(opts.Alg, opts.Staged)
	if err != nil {
		return nil, fmt.Errorf("trim: %w", err)
	}
	defer w.Close()

	// Read the state again, because no other trim can run now. Every trim
	// records its outcome while it holds its write open. One that finished
	// since the first read may have moved the start or named a new carry
	// file, which a stale state would treat as unused and remove.
	if st, err = LoadState(opts.Dir); err != nil {
		return nil, err
	}

	view := before
	data, err := readAll(w)
	if err != nil {
		return nil, err
	}
	entries, err := opts.Split(data)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", w.Name(), err)
	}
	if opts.Staged {
		view.staged = entries
	} else {
		view.current = entries
	}

	res := &Result{}
	if st.Pending != nil {
		decide := func() (bool, error) {
			return decideByReplay(opts, st.Pending, st.KernelStart(), covered, func() ([][]byte, error) {
				// The writer holds the lock, so the list has only grown.
				data, err := readAll(w)
				if err != nil {
					return nil, err
				}
				current, err := opts.Split(data)
				if err != nil {
					return nil, fmt.Errorf("parse %s: %w", w.Name(), err)
				}
				return append(append([][]byte{}, view.staged...), current...), nil
			})
		}
		if err := resolvePending(opts.Dir, st, view, decide); err != nil {
			return nil, err
		}
		res.Recovered = true
		// The kernel list is unchanged since it was read: the lock is held.
	}

	used, err := dropCoveredCarry(opts.Dir, st, covered, opts.Split)
	if err != nil {
		return nil, err
	}
	res.CarryUsed = used
	removeUnusedCarry(opts.Dir, st)

	if covered.End() > st.KernelStart() && covered.Start > st.KernelStart() {
		return nil, fmt.Errorf("%w: the kernel list starts at history index %d, the shards at %d", ErrGap, st.KernelStart(), covered.Start)
	}

	if opts.Staged {
		err = trimStaged(opts, st, view, covered, w, res)
	} else {
		err = trimCount(opts, st, view, covered, w, res)
	}
	res.LiveStart = st.LiveStart
	res.KernelStart = st.KernelStart()
	return res, err
}

// kernelView is the kernel's list in history order: staged entries first.
type kernelView struct {
	staged  [][]byte
	current [][]byte
}

func (v kernelView) all() [][]byte {
	if len(v.staged) == 0 {
		return v.current
	}
	return append(append([][]byte{}, v.staged...), v.current...)
}

// readLists reads the staged and the current list with read opens. Both
// are open before either is read, so no writer can change them in between.
func readLists(opts Options) (kernelView, error) {
	var v kernelView
	var paths []string
	stagedPath, err := opts.FS.ListPath(opts.Alg, true)
	if err != nil {
		return v, err
	}
	currentPath, err := opts.FS.ListPath(opts.Alg, false)
	if err != nil {
		return v, err
	}
	paths = append(paths, stagedPath, currentPath)

	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for _, p := range paths {
		f, err := securityfs.OpenReader(p, opts.FS.Retry)
		if err != nil {
			return v, fmt.Errorf("trim: %w", err)
		}
		files = append(files, f)
	}
	lists := make([][][]byte, len(files))
	for i, f := range files {
		data, err := io.ReadAll(f)
		if err != nil {
			return v, fmt.Errorf("read %s: %w", f.Name(), err)
		}
		if lists[i], err = opts.Split(data); err != nil {
			return v, fmt.Errorf("parse %s: %w", f.Name(), err)
		}
	}
	v.staged, v.current = lists[0], lists[1]
	return v, nil
}

func readAll(w *securityfs.Writer) ([]byte, error) {
	if err := w.Rewind(); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(w)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", w.Name(), err)
	}
	return data, nil
}

// compareCovered checks that entries, starting at history index start,
// equal the covered entries of the same index, for the first n of them.
func compareCovered(entries [][]byte, start, n int64, covered Covered) error {
	for i := int64(0); i < n; i++ {
		want, ok := covered.at(start + i)
		if !ok {
			return fmt.Errorf("%w: history index %d is in no shard", ErrGap, start+i)
		}
		if !bytes.Equal(entries[i], want) {
			return fmt.Errorf("%w: live entry at history index %d (list position %d) differs from the shard entry; the list changed outside imashard or the state file is stale, nothing was deleted", ErrMismatch, start+i, i)
		}
	}
	return nil
}

func trimCount(opts Options, st *State, view kernelView, covered Covered, w *securityfs.Writer, res *Result) error {
	if len(view.staged) > 0 {
		return fmt.Errorf("trim: %d entries are staged ahead of the current list (left by another tool, a crash or the previous kernel); run with --trim-mode staged to delete them", len(view.staged))
	}
	start := st.KernelStart()
	n := covered.End() - start
	if n <= 0 {
		slog.Info("trim: the shards hold no entry of the kernel list", "kernel_start", start, "shards_end", covered.End())
		return nil
	}
	if n > int64(len(view.current)) {
		return fmt.Errorf("%w: shards end at history index %d but the kernel list ends at %d; the state file is stale or another tool trimmed the list", ErrMismatch, covered.End(), start+int64(len(view.current)))
	}
	if err := compareCovered(view.current, start, n, covered); err != nil {
		return err
	}

	after := *st
	after.LiveStart += n
	after.Pending = nil
	if err := beginPending(opts.Dir, st, view.current, n, false, &after); err != nil {
		return err
	}
	crashPoint("intent-recorded")

	if err := checkNoKexecLoaded(); err != nil {
		return abortPending(opts.Dir, st, fmt.Errorf("trim %d entries: %w", n, err))
	}
	if err := w.Trim(n); err != nil {
		// The kernel deletes all n entries or none, and it failed.
		return abortPending(opts.Dir, st, fmt.Errorf("trim %d entries: %w", n, err))
	}
	crashPoint("deleted")

	*st = after
	if err := SaveState(opts.Dir, st); err != nil {
		return fmt.Errorf("record trim of %d entries (the next run repairs this): %w", n, err)
	}
	res.Deleted = n
	return nil
}

func trimStaged(opts Options, st *State, view kernelView, covered Covered, w *securityfs.Writer, res *Result) error {
	// Carried entries come before the kernel's list, so the shards can
	// hold a kernel entry only once they hold every carried one, and
	// dropCoveredCarry has then dropped them all.
	start := st.KernelStart()
	if covered.End() <= start {
		slog.Info("trim: the shards hold no entry of the kernel list; nothing is staged or deleted", "kernel_start", start, "shards_end", covered.End())
		return nil
	}

	staged := view.staged
	if len(staged) == 0 {
		if err := w.Stage(); err != nil {
			if errors.Is(err, securityfs.ErrNothingToStage) {
				return nil
			}
			return fmt.Errorf("trim: %w", err)
		}
		data, err := readAll(w)
		if err != nil {
			return err
		}
		if staged, err = opts.Split(data); err != nil {
			return fmt.Errorf("parse staged list %s: %w", w.Name(), err)
		}
		// Staging moved a prefix of the current list, which may have grown
		// since it was read; the staged list must start with what was read.
		for i := 0; i < len(view.current) && i < len(staged); i++ {
			if !bytes.Equal(staged[i], view.current[i]) {
				return fmt.Errorf("%w: staged entry %d differs from current entry %d read before staging", ErrMismatch, i, i)
			}
		}
	}

	n := covered.End() - start
	if n > int64(len(staged)) {
		n = int64(len(staged))
	}
	if err := compareCovered(staged, start, n, covered); err != nil {
		return err
	}

	// The kernel deletes all staged entries at once, so the ones no shard
	// holds go to a carry file first and come before the kernel list in
	// history until a shard holds them.
	after := *st
	after.Pending = nil
	uncovered := staged[n:]
	if len(uncovered) > 0 {
		name := fmt.Sprintf("carry-%d.bin", start+n)
		if err := WriteFileDurable(filepath.Join(opts.Dir, name), bytes.Join(uncovered, nil)); err != nil {
			return fmt.Errorf("save %d staged entries that are in no shard yet (nothing deleted): %w", len(uncovered), err)
		}
		after.CarryFile = name
		after.Carry = int64(len(uncovered))
		crashPoint("carry-written")
	}
	after.LiveStart = start + n

	if err := beginPending(opts.Dir, st, staged, int64(len(staged)), true, &after); err != nil {
		return err
	}
	crashPoint("intent-recorded")

	if err := checkNoKexecLoaded(); err != nil {
		return abortPending(opts.Dir, st, fmt.Errorf("delete %d staged entries: %w", len(staged), err))
	}
	if err := w.Delete(); err != nil {
		return abortPending(opts.Dir, st, fmt.Errorf("delete %d staged entries: %w", len(staged), err))
	}
	crashPoint("deleted")

	*st = after
	if err := SaveState(opts.Dir, st); err != nil {
		return fmt.Errorf("record deletion of %d staged entries (the next run repairs this): %w", len(staged), err)
	}
	res.Deleted = int64(len(staged))
	res.Carried = int64(len(uncovered))
	return nil
}

func digestEntries(entries [][]byte) []byte {
	h := sha256.New()
	for _, e := range entries {
		h.Write(e)
	}
	return h.Sum(nil)
}

// beginPending durably records that count entries at the head of list are
// about to be deleted, with the state to record afterwards.
func beginPending(dir string, st *State, list [][]byte, count int64, staged bool, after *State) error {
	intent := *st
	intent.Pending = &PendingTrim{
		Count:       count,
		ListEntries: int64(len(list)),
		HeadDigest:  digestEntries(list[:count]),
		KeptDigest:  digestEntries(list[count:]),
		Staged:      staged,
		After:       after,
	}
	if err := SaveState(dir, &intent); err != nil {
		return fmt.Errorf("record trim intent, nothing deleted: %w", err)
	}
	return nil
}

func abortPending(dir string, st *State, cause error) error {
	p := st.Pending
	st.Pending = nil
	if err := SaveState(dir, st); err != nil {
		slog.Error("trim failed and clearing its intent failed too; the next run resolves it", "err", err)
		return cause
	}
	// The carry file the aborted trim wrote holds entries the kernel
	// still has, so it goes once the state no longer names it.
	if p != nil && p.After != nil && p.After.CarryFile != st.CarryFile {
		removeStaleCarry(dir, p.After.CarryFile)
	}
	return cause
}

// resolvePending decides from the kernel's lists whether a recorded
// deletion happened, and records the outcome. When the lists fit both
// outcomes, decide chooses.
func resolvePending(dir string, st *State, view kernelView, decide func() (deleted bool, err error)) error {
	p := st.Pending
	var notDeleted, deleted bool
	if p.Staged {
		// "D" deletes the whole staged list, which does not grow, so the
		// staged list is either exactly what was staged or something else.
		notDeleted = int64(len(view.staged)) == p.Count &&
			bytes.Equal(digestEntries(view.staged), p.HeadDigest)
		deleted = !notDeleted
	} else {
		list := view.all()
		kept := p.ListEntries - p.Count
		notDeleted = int64(len(list)) >= p.ListEntries &&
			bytes.Equal(digestEntries(list[:p.Count]), p.HeadDigest) &&
			bytes.Equal(digestEntries(list[p.Count:p.ListEntries]), p.KeptDigest)
		deleted = int64(len(list)) >= kept &&
			bytes.Equal(digestEntries(list[:kept]), p.KeptDigest)
	}

	if notDeleted && deleted {
		var err error
		if deleted, err = decide(); err != nil {
			return err
		}
		notDeleted = !deleted
	}
	switch {
	case deleted:
		slog.Info("trim: an interrupted trim had deleted its entries; recording it", "count", p.Count)
		*st = *p.After
		if err := SaveState(dir, st); err != nil {
			return fmt.Errorf("record the interrupted trim of %d entries: %w", p.Count, err)
		}
	case notDeleted:
		slog.Info("trim: an interrupted trim had not deleted its entries; dropping its intent", "count", p.Count)
		carry := p.After.CarryFile
		st.Pending = nil
		if err := SaveState(dir, st); err != nil {
			return fmt.Errorf("drop the intent of an interrupted trim: %w", err)
		}
		if carry != "" && carry != st.CarryFile {
			removeStaleCarry(dir, carry)
		}
	default:
		return fmt.Errorf("%w: the kernel list matches neither outcome of an interrupted trim of %d entries; another tool changed it", ErrMismatch, p.Count)
	}
	return nil
}

func removeStaleCarry(dir, name string) {
	if name == "" {
		return
	}
	if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		slog.Warn("trim: could not remove an unused carry file", "file", name, "err", err)
	}
}

// dropCoveredCarry removes carried entries once shards hold them.
func dropCoveredCarry(dir string, st *State, covered Covered, split SplitFunc) (int64, error) {
	if st.Carry == 0 || covered.End() <= st.LiveStart {
		return 0, nil
	}
	entries, err := ReadCarry(dir, st, split)
	if err != nil {
		return 0, err
	}
	n := covered.End() - st.LiveStart
	if n > st.Carry {
		n = st.Carry
	}
	if err := compareCovered(entries, st.LiveStart, n, covered); err != nil {
		return 0, fmt.Errorf("carried entries: %w", err)
	}

	old := st.CarryFile
	next := *st
	next.LiveStart += n
	next.Carry -= n
	next.CarryFile = ""
	if next.Carry > 0 {
		next.CarryFile = fmt.Sprintf("carry-%d.bin", next.LiveStart)
		if err := WriteFileDurable(filepath.Join(dir, next.CarryFile), bytes.Join(entries[n:], nil)); err != nil {
			return 0, err
		}
		crashPoint("carry-rewritten")
	}
	// The state names the old carry file until this save. A crash before
	// it leaves at most an unused new file, a crash after it at most the
	// unused old one, and removeUnusedCarry deletes either later.
	if err := SaveState(dir, &next); err != nil {
		return 0, err
	}
	crashPoint("carry-dropped")
	*st = next
	if old != st.CarryFile {
		removeStaleCarry(dir, old)
	}
	slog.Info("trim: shards now hold carried entries; dropped them", "dropped", n, "still_carried", next.Carry, "live_start", next.LiveStart)
	return n, nil
}

// removeUnusedCarry deletes carry files that neither the state nor its
// pending trim names. A crash between writing a carry file and recording
// it, or between recording a new one and deleting the old, leaves one.
func removeUnusedCarry(dir string, st *State) {
	files, err := filepath.Glob(filepath.Join(dir, "carry-*.bin"))
	if err != nil {
		return
	}
	for _, f := range files {
		name := filepath.Base(f)
		if name == st.CarryFile || (st.Pending != nil && name == st.Pending.After.CarryFile) {
			continue
		}
		slog.Info("trim: removing a carry file that no state names", "file", name)
		removeStaleCarry(dir, name)
	}
}
