// Package trim deletes from the kernel's IMA measurement list the entries
// that durable shards already contain. It records beside the shards the
// history index of the first entry not yet deleted, so snapshots and
// verification keep working after the list no longer starts at boot.
//
// A trim changes two things that a crash can separate: the kernel's list
// and the state file. So Trim records its intent durably before the kernel
// deletes, and the next Trim decides from the kernel's lists whether the
// deletion happened and records the outcome. No entry is lost or counted
// twice.
package trim

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// StateFile is the name of the state file in the chain directory.
const StateFile = "live-state.json"

// stateVersion is the format version this package writes and reads.
const stateVersion = 1

// State records where the kernel's current list starts in the history that
// the shards and the live list form together.
type State struct {
	Version int `json:"version"`

	// LiveStart is the history index of the first entry not yet deleted:
	// the first carried entry when Carry is non-zero, else the kernel's
	// first entry (staged entries come before current ones).
	LiveStart int64 `json:"live_start"`

	// CarryFile names a file in the chain directory with Carry raw entries
	// that a staged trim deleted from the kernel before any shard held
	// them. They come right before the kernel's first entry in history.
	CarryFile string `json:"carry_file,omitempty"`
	Carry     int64  `json:"carry,omitempty"`

	// BootID is the kernel boot ID (/proc/sys/kernel/random/boot_id) in
	// which LiveStart was last placed after a kexec, so that placement
	// runs once per boot.
	BootID string `json:"boot_id,omitempty"`

	// Pending is set from just before a deletion until its result is
	// recorded.
	Pending *PendingTrim `json:"pending,omitempty"`
}

// PendingTrim describes a deletion that may or may not have happened.
type PendingTrim struct {
	// Count is the number of entries the trim deletes from the list head.
	Count int64 `json:"count"`

	// ListEntries is the number of entries the list had when the trim
	// was decided.
	ListEntries int64 `json:"list_entries"`

	// HeadDigest and KeptDigest are SHA-256 digests over the raw entries
	// [0, Count) and [Count, ListEntries) of the list at that moment. After
	// the deletion the list starts with the kept entries, before it with
	// the head, so the next Trim can distinguish the two.
	HeadDigest []byte `json:"head_sha256"`
	KeptDigest []byte `json:"kept_sha256"`

	// Staged is true for a staged-mode deletion ("D" on a _staged file).
	Staged bool `json:"staged,omitempty"`

	// After is the state to record once the deletion has happened.
	After *State `json:"after"`
}

// KernelStart returns the history index of the kernel's first entry.
func (s *State) KernelStart() int64 {
	return s.LiveStart + s.Carry
}

// ErrStateVersion reports a state file written by a newer imashard.
var ErrStateVersion = errors.New("unknown state file version")

// LoadState reads the state file of a chain directory. A missing file
// means nothing was ever trimmed: LiveStart 0.
func LoadState(dir string) (*State, error) {
	path := filepath.Join(dir, StateFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return &State{Version: stateVersion}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read trim state: %w", err)
	}

	var s State
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("read trim state %s: invalid JSON: %w (restore it from a backup; deleting it makes the next snapshot misplace the live list)", path, err)
	}
	if s.Version != stateVersion {
		return nil, fmt.Errorf("read trim state %s: %w %d (this imashard reads version %d)", path, ErrStateVersion, s.Version, stateVersion)
	}
	if err := s.validate(true); err != nil {
		return nil, fmt.Errorf("read trim state %s: %w", path, err)
	}
	return &s, nil
}

func (s *State) validate(allowPending bool) error {
	if s.LiveStart < 0 {
		return fmt.Errorf("invalid live_start %d", s.LiveStart)
	}
	if s.Carry < 0 || (s.Carry > 0) != (s.CarryFile != "") {
		return fmt.Errorf("invalid carry of %d entries in %q", s.Carry, s.CarryFile)
	}
	if s.CarryFile != "" && !isCarryFileName(s.CarryFile) {
		// A trim deletes the carry file once shards hold its entries, so
		// a hand-edited name must not reach the state file or a shard.
		return fmt.Errorf("invalid carry file name %q: it must be carry-<history index>.bin in the chain directory", s.CarryFile)
	}
	p := s.Pending
	if p == nil {
		return nil
	}
	if !allowPending {
		return errors.New("a pending trim inside a pending trim")
	}
	if p.Count < 1 || p.ListEntries < p.Count || p.After == nil {
		return fmt.Errorf("invalid pending trim of %d of %d entries", p.Count, p.ListEntries)
	}
	if err := p.After.validate(false); err != nil {
		return fmt.Errorf("pending trim: %w", err)
	}
	return nil
}

// isCarryFileName reports whether name has the form carry-<N>.bin that
// trims give carry files.
func isCarryFileName(name string) bool {
	digits, ok := strings.CutPrefix(name, "carry-")
	if !ok {
		return false
	}
	digits, ok = strings.CutSuffix(digits, ".bin")
	if !ok || digits == "" {
		return false
	}
	_, err := strconv.ParseUint(digits, 10, 63)
	return err == nil
}

// SaveState writes the state file durably: a temporary file, fsync,
// rename over the old file, fsync of the directory. A crash leaves either
// the old or the new state, never a mix.
func SaveState(dir string, s *State) error {
	s.Version = stateVersion
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return WriteFileDurable(filepath.Join(dir, StateFile), append(data, '\n'))
}

// WriteFileDurable replaces path with data so that after a crash the path
// holds either its old content or data.
func WriteFileDurable(path string, data []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	committed := false
	defer func() {
		if !committed {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()

	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("rename %s to %s: %w", tmp.Name(), path, err)
	}
	committed = true

	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open directory %s for fsync: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}
