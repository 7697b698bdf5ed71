package trim

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"

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

// Live is the rest of the history outside the shards, in order: the
// carried entries, the kernel's staged entries, then its current list.
type Live struct {
	Start int64  // history index of the first byte of Data's first entry
	Data  []byte // binary list in the format of the requested bank
}

// ReadLive returns the live part of the history for a bank. It opens the
// staged and the current list before reading either, so no trim can run
// between the two reads.
func ReadLive(dir string, fs *securityfs.FS, alg pcr.Alg) (*Live, error) {
	st, err := LoadState(dir)
	if err != nil {
		return nil, err
	}
	if st.Pending != nil {
		return nil, fmt.Errorf("an interrupted trim is pending in %s: run `imashard snapshot --trim` to resolve it", filepath.Join(dir, StateFile))
	}

	var buf bytes.Buffer
	if st.Carry > 0 {
		data, err := os.ReadFile(filepath.Join(dir, st.CarryFile))
		if err != nil {
			return nil, fmt.Errorf("read carried entries: %w", err)
		}
		buf.Write(data)
	}

	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	var paths []string
	if fs.CheckStaging() == nil {
		p, err := fs.ListPath(alg, true)
		if err != nil {
			return nil, err
		}
		paths = append(paths, p)
	}
	p, err := fs.ListPath(alg, false)
	if err != nil {
		return nil, err
	}
	paths = append(paths, p)
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", p, err)
		}
		files = append(files, f)
	}
	for _, f := range files {
		if _, err := io.Copy(&buf, f); err != nil {
			return nil, fmt.Errorf("read %s: %w", f.Name(), err)
		}
	}
	return &Live{Start: st.LiveStart, Data: buf.Bytes()}, nil
}
