package trim

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
)

// ErrUncovered reports entries of a previous kernel that neither reached a
// shard nor the running kernel's list: the history has a hole.
var ErrUncovered = errors.New("entries of the previous kernel are in no shard and were not carried over")

// Carry-over outcomes of Reconcile.
const (
	Carried = "carried" // the kernel's list continues the previous kernel's (CONFIG_IMA_KEXEC with kexec_file_load)
	Fresh   = "fresh"   // the kernel started an empty list (kexec_load, or no CONFIG_IMA_KEXEC)
)

// Reconcile decides after a kexec whether the running kernel's list
// (staged entries first) continues the previous kernel's list or starts
// afresh, and returns the state that places it in the history. The shards
// in covered must include the final snapshot taken before the kexec.
//
// A carried list starts at the state's kernel start and must equal every
// covered entry from there, byte for byte. A fresh list starts right after
// the shards, which must then contain every entry of the previous kernel.
func Reconcile(st *State, covered Covered, list [][]byte) (*State, string, error) {
	if st.Pending != nil {
		return nil, "", fmt.Errorf("an interrupted trim is pending; resolve it in the previous kernel's state before reconciling")
	}
	start := st.KernelStart()
	if covered.Start > start {
		return nil, "", fmt.Errorf("%w: the shards start at history index %d, after the kernel list's start %d", ErrGap, covered.Start, start)
	}

	if covered.chainEnd() < st.LiveStart {
		return nil, "", fmt.Errorf("%w: the shards end at history index %d but the live part starts at %d", ErrUncovered, covered.chainEnd(), st.LiveStart)
	}

	overlap := covered.End() - start
	if overlap > 0 && int64(len(list)) >= overlap && matchesCovered(list, start, overlap, covered) {
		slog.Info("kernel list carried over from the previous kernel", "kernel_start", start, "overlap", overlap)
		return st, Carried, nil
	}
	// Without the state file (it was not carried along) the recorded start
	// can be wrong, so look for the one place in the shards where the list
	// continues them.
	if found, ok := findCarriedStart(covered, list); ok && found != start {
		slog.Warn("kernel list continues the shards at another history index than the trim state records", "recorded", start, "found", found)
		next := &State{Version: stateVersion, LiveStart: found, BootID: st.BootID}
		return next, Carried, nil
	}
	if overlap <= 0 && covered.chainEnd() <= start {
		// Nothing past the recorded start is in a shard, and no tail
		// either: a carried list and a fresh one both start at start.
		slog.Info("kernel list starts where the shards end", "kernel_start", start)
		return st, Carried, nil
	}
	if overlap <= 0 {
		// TODO: with no shard entry past the kernel start, a carried list
		// and a fresh one look alike. A final snapshot before kexec always
		// leaves an overlap, so this needs a chain without one.
		return nil, "", fmt.Errorf("%w: no shard contains entries from history index %d on, so a carried list cannot be recognised; take a final snapshot before kexec", ErrUncovered, start)
	}

	// A fresh list: the previous kernel's entries end where the shards end,
	// the last tail included, and carried entries of a staged trim are in
	// the shards too.
	end := covered.chainEnd()
	next := &State{Version: stateVersion, LiveStart: end, BootID: st.BootID}
	if st.Carry > 0 && st.LiveStart+st.Carry > end {
		return nil, "", fmt.Errorf("%w: %d carried entries past history index %d", ErrUncovered, st.LiveStart+st.Carry-end, end)
	}
	slog.Info("kernel list starts afresh after kexec", "previous_kernel_start", start, "history_index", next.LiveStart)
	return next, Fresh, nil
}

func matchesCovered(list [][]byte, start, n int64, covered Covered) bool {
	for i := int64(0); i < n; i++ {
		want, ok := covered.at(start + i)
		if !ok || !bytes.Equal(list[i], want) {
			return false
		}
	}
	return true
}

// findCarriedStart returns the history index from which list equals the
// covered entries up to their end, when exactly one such index exists.
func findCarriedStart(covered Covered, list [][]byte) (int64, bool) {
	if len(list) == 0 {
		return 0, false
	}
	found, matches := int64(0), 0
	for i, e := range covered.Raw {
		n := int64(len(covered.Raw) - i)
		if !bytes.Equal(e, list[0]) || int64(len(list)) < n {
			continue
		}
		if matchesCovered(list, covered.Start+int64(i), n, covered) {
			found = covered.Start + int64(i)
			matches++
		}
	}
	return found, matches == 1
}
