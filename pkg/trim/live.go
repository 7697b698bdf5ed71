package trim

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/imashard/imashard/pkg/imalog"
	"github.com/imashard/imashard/pkg/pcr"
	"github.com/imashard/imashard/pkg/securityfs"
)

// ReadCarry returns the carried entries of the state, split with split.
func ReadCarry(dir string, st *State, split SplitFunc) ([][]byte, error) {
	if st.Carry == 0 {
		return nil, nil
	}
	path := filepath.Join(dir, st.CarryFile)
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read carried entries: %w (the state file names it; without it %d entries are lost)", err, st.Carry)
	}
	entries, err := split(data)
	if err != nil {
		return nil, fmt.Errorf("read carried entries %s: %w", path, err)
	}
	if int64(len(entries)) != st.Carry {
		return nil, fmt.Errorf("read carried entries %s: it contains %d entries, but the state file records %d", path, len(entries), st.Carry)
	}
	return entries, nil
}

// StagedTwin returns the path of the staged list that belongs to the
// binary list at path, or "" when it has none. Every list of a kernel
// built with CONFIG_IMA_STAGING has a twin whose name ends in "_staged",
// the legacy binary_runtime_measurements symlink included.
func StagedTwin(path string) string {
	twin := path + "_staged"
	if _, err := os.Stat(twin); err != nil {
		return ""
	}
	return twin
}

// kernelList is the kernel's staged list (when there is one) followed by
// its current list, read as one stream.
type kernelList struct {
	io.Reader
	files []*os.File
}

func (k *kernelList) Close() error {
	var errs []error
	for _, f := range k.files {
		errs = append(errs, f.Close())
	}
	return errors.Join(errs...)
}

// OpenKernelList opens the staged twin of the binary list at path and the
// list itself, both before reading either, and returns them as one list
// in history order: staged entries first. While the reader is open no
// process can open a list for writing, so no trim runs between the two
// reads. Opens that fail with EBUSY are retried as retry allows.
func OpenKernelList(path string, retry securityfs.Retry) (io.ReadCloser, error) {
	paths := []string{path}
	if twin := StagedTwin(path); twin != "" {
		paths = []string{twin, path}
	}
	k := &kernelList{}
	readers := make([]io.Reader, 0, len(paths))
	for _, p := range paths {
		f, err := securityfs.OpenReader(p, retry)
		if err != nil {
			k.Close()
			return nil, err
		}
		k.files = append(k.files, f)
		readers = append(readers, f)
	}
	k.Reader = io.MultiReader(readers...)
	return k, nil
}

// LiveSource is the live part of the history at one moment, in order: the
// carried entries, the kernel's staged entries, then its current list.
// Open returns it as one binary list, which is what a snapshot cuts the
// next shard from and what verify --live replays, so carried entries join
// the next shard like any other live entry.
type LiveSource struct {
	Start int64 // history index of the first entry Open returns
	Carry int64 // carried entries at the start of what Open returns
	Path  string
	Retry securityfs.Retry

	carry []byte
}

// NewLiveSource returns the live part of the history of the chain in dir,
// as state st places it, with the kernel's list at path. It reads the
// carry file now and checks its entry count with split.
func NewLiveSource(dir string, st *State, path string, split SplitFunc, retry securityfs.Retry) (*LiveSource, error) {
	if st.Pending != nil {
		return nil, fmt.Errorf("an interrupted trim is pending in %s: run `imashard snapshot --trim` to resolve it", filepath.Join(dir, StateFile))
	}
	carried, err := ReadCarry(dir, st, split)
	if err != nil {
		return nil, err
	}
	return &LiveSource{Start: st.LiveStart, Carry: st.Carry, Path: path, Retry: retry, carry: bytes.Join(carried, nil)}, nil
}

// Open returns the carried entries followed by the kernel's list.
func (s *LiveSource) Open() (io.ReadCloser, error) {
	k, err := OpenKernelList(s.Path, s.Retry)
	if err != nil {
		return nil, err
	}
	if len(s.carry) == 0 {
		return k, nil
	}
	return &struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(s.carry), k), k}, nil
}

// Live is the rest of the history outside the shards, in order: the
// carried entries, the kernel's staged entries, then its current list.
type Live struct {
	Start int64  // history index of the first byte of Data's first entry
	Data  []byte // binary list in the format of the requested bank
}

// ReadLive returns the live part of the history for a bank.
func ReadLive(dir string, fs *securityfs.FS, alg pcr.Alg) (*Live, error) {
	st, err := LoadState(dir)
	if err != nil {
		return nil, err
	}
	path, err := fs.ListPath(alg, false)
	if err != nil {
		return nil, err
	}
	src, err := NewLiveSource(dir, st, path, SplitWith(imalog.Options{DigestAlg: alg}), fs.Retry)
	if err != nil {
		return nil, err
	}
	r, err := src.Open()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("read the live part of the history: %w", err)
	}
	return &Live{Start: st.LiveStart, Data: data}, nil
}

// CountList returns the number of entries in the measurement list at path.
func CountList(path string, split SplitFunc, retry securityfs.Retry) (int64, error) {
	f, err := securityfs.OpenReader(path, retry)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	entries, err := split(data)
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", path, err)
	}
	return int64(len(entries)), nil
}
