package handoff

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
)

// ErrConflict is returned when a carried file would replace a different
// file of the same name in the chain directory. Neither is touched.
var ErrConflict = errors.New("carried file differs from the file already kept")

// Keep copies the regular files of src (the carried shards) into dst,
// creating dst when needed, and returns the names it holds afterwards, in
// name order. A file already in dst with the same bytes is left as it is.
// A file with other bytes is an ErrConflict, so no evidence is overwritten. Each
// copy is written to a temporary file, synced and renamed into place.
func Keep(src, dst string) ([]string, error) {
	entries, err := os.ReadDir(src)
	if err != nil {
		return nil, fmt.Errorf("read carried directory %s: %w", src, err)
	}
	if err := os.MkdirAll(dst, 0o700); err != nil {
		return nil, fmt.Errorf("create chain directory %s: %w", dst, err)
	}

	var names []string
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		names = append(names, e.Name())
		data, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("read carried file: %w", err)
		}

		target := filepath.Join(dst, e.Name())
		old, err := os.ReadFile(target)
		switch {
		case err == nil && bytes.Equal(old, data):
			continue
		case err == nil:
			return nil, fmt.Errorf("%w: %s (%d bytes) and carried %s (%d bytes); compare them and remove the wrong one by hand",
				ErrConflict, target, len(old), filepath.Join(src, e.Name()), len(data))
		case !errors.Is(err, os.ErrNotExist):
			return nil, fmt.Errorf("read %s: %w", target, err)
		}
		if err := writeSynced(target, data); err != nil {
			return nil, err
		}
		slog.Debug("kept carried file", "path", target, "bytes", len(data))
	}
	sort.Strings(names)
	return names, nil
}

func writeSynced(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".keep-*")
	if err != nil {
		return fmt.Errorf("create temporary file beside %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp.Name(), err)
	}
	// Link fails when path exists, so a file created meanwhile is never
	// replaced.
	if err := os.Link(tmp.Name(), path); err != nil {
		return fmt.Errorf("place %s: %w", path, err)
	}
	return nil
}
