package trim

import (
	"errors"
	"testing"
)

func TestReconcile(t *testing.T) {
	history := entries("boot_aggregate", "a", "b", "c", "d")
	covered := Covered{Start: 0, Raw: history[:4]} // the final shard ends before "d"

	t.Run("carried after trim", func(t *testing.T) {
		st := &State{Version: stateVersion, LiveStart: 2}
		list := append(entries("b", "c", "d"), entries("boot_aggregate", "e")...)
		next, how, err := Reconcile(st, covered, list)
		if err != nil || how != Carried || next.LiveStart != 2 {
			t.Fatalf("Reconcile = %+v, %q, %v; want carried from 2", next, how, err)
		}
	})
	t.Run("fresh list after a tail", func(t *testing.T) {
		st := &State{Version: stateVersion, LiveStart: 2}
		withTail := covered
		withTail.ChainEnd = 5 // the last shard's tail holds "d"
		next, how, err := Reconcile(st, withTail, entries("boot_aggregate", "e"))
		if err != nil || how != Fresh || next.LiveStart != 5 {
			t.Fatalf("Reconcile = %+v, %q, %v; want fresh at 5", next, how, err)
		}
	})
	t.Run("fresh list", func(t *testing.T) {
		st := &State{Version: stateVersion, LiveStart: 2}
		next, how, err := Reconcile(st, covered, entries("boot_aggregate", "e"))
		if err != nil || how != Fresh || next.LiveStart != 4 {
			t.Fatalf("Reconcile = %+v, %q, %v; want fresh at 4", next, how, err)
		}
	})
	t.Run("carried list changed", func(t *testing.T) {
		// Same length as a carried list but the second entry differs: not
		// carried, so the list is taken as fresh after the shards.
		st := &State{Version: stateVersion, LiveStart: 2}
		next, how, err := Reconcile(st, covered, entries("b", "X", "d"))
		if err != nil || how != Fresh || next.LiveStart != 4 {
			t.Fatalf("Reconcile = %+v, %q, %v; want fresh", next, how, err)
		}
	})
	t.Run("carried without state file", func(t *testing.T) {
		// The state was lost: it records start 0, the list starts at 2.
		st := &State{Version: stateVersion}
		list := append(entries("b", "c", "d"), entries("boot_aggregate", "e")...)
		next, how, err := Reconcile(st, covered, list)
		if err != nil || how != Carried || next.LiveStart != 2 {
			t.Fatalf("Reconcile = %+v, %q, %v; want carried from 2", next, how, err)
		}
	})
	t.Run("everything trimmed", func(t *testing.T) {
		// The shards end at 4 with no tail and the list starts there, so
		// carried or fresh, the list starts at 4.
		st := &State{Version: stateVersion, LiveStart: 4}
		next, _, err := Reconcile(st, covered, entries("d", "boot_aggregate"))
		if err != nil || next.KernelStart() != 4 {
			t.Fatalf("Reconcile = %+v, %v; want the list at 4", next, err)
		}
	})
	t.Run("tail not covered", func(t *testing.T) {
		st := &State{Version: stateVersion, LiveStart: 4}
		withTail := covered
		withTail.ChainEnd = 6
		_, _, err := Reconcile(st, withTail, entries("d"))
		if !errors.Is(err, ErrUncovered) {
			t.Fatalf("err = %v, want ErrUncovered", err)
		}
	})
	t.Run("carry after the shards", func(t *testing.T) {
		// Carried entries 3 and 4 are in the carry file; the shards end at
		// 4 and the kernel list starts at 5: nothing is lost.
		st := &State{Version: stateVersion, LiveStart: 3, Carry: 2, CarryFile: "carry-3.bin"}
		next, _, err := Reconcile(st, Covered{Start: 0, Raw: history[:4], ChainEnd: 4}, entries("boot_aggregate"))
		if err != nil || next.KernelStart() != 5 {
			t.Fatalf("Reconcile = %+v, %v; want the kernel list at 5", next, err)
		}
	})
	t.Run("shards end before the live part", func(t *testing.T) {
		st := &State{Version: stateVersion, LiveStart: 6}
		_, _, err := Reconcile(st, Covered{Start: 6, ChainEnd: 4}, entries("x"))
		if !errors.Is(err, ErrUncovered) {
			t.Fatalf("err = %v, want ErrUncovered", err)
		}
	})
}
