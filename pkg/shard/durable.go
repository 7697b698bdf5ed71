package shard

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// File names inside a chain directory.
const (
	shardPrefix  = "shard-"
	shardSuffix  = ".ims"
	tempPrefix   = ".shard-"
	tempSuffix   = ".tmp"
	lockFileName = "lock"
)

// Shard file names carry the sequence number in 10 to 20 decimal digits:
// FileName pads to 10, and the largest uint64 has 20.
const (
	minSequenceDigits = 10
	maxSequenceDigits = 20
)

// FileName returns the file name of the shard with the given sequence
// number. The zero padding keeps lexical and numeric order equal.
func FileName(sequence uint64) string {
	return fmt.Sprintf("%s%010d%s", shardPrefix, sequence, shardSuffix)
}

// ChainFile is a shard file found in a chain directory.
type ChainFile struct {
	Path     string
	Sequence uint64 // from the file name; the header must agree
}

// ListChain returns the shard files in dir in file-name sequence order.
// Names that start with "shard-" but do not follow the pattern are reported
// as errors, because a renamed shard would otherwise drop out of the chain
// silently.
func ListChain(dir string) ([]ChainFile, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read chain directory: %w", err)
	}
	var files []ChainFile
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, shardPrefix) {
			continue
		}
		digits, ok := sequenceDigits(name)
		if !ok {
			return nil, fmt.Errorf("%w: %s in %s does not match shard-NNNNNNNNNN.ims: rename or remove it", ErrMalformed, name, dir)
		}
		seq, err := strconv.ParseUint(digits, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: sequence out of range", ErrMalformed, name)
		}
		files = append(files, ChainFile{Path: filepath.Join(dir, name), Sequence: seq})
	}
	sort.SliceStable(files, func(i, j int) bool { return files[i].Sequence < files[j].Sequence })
	return files, nil
}

// sequenceDigits returns the decimal digits of a shard file name of the
// form shard-NNNNNNNNNN.ims, with 10 to 20 ASCII digits, and false for any
// other name.
func sequenceDigits(name string) (string, bool) {
	digits, ok := strings.CutPrefix(name, shardPrefix)
	if !ok {
		return "", false
	}
	if digits, ok = strings.CutSuffix(digits, shardSuffix); !ok {
		return "", false
	}
	if len(digits) < minSequenceDigits || len(digits) > maxSequenceDigits {
		return "", false
	}
	for i := 0; i < len(digits); i++ {
		if digits[i] < '0' || digits[i] > '9' {
			return "", false
		}
	}
	return digits, true
}

// crashAt makes the write path exit the process at numbered steps, so tests
// can check that a crash anywhere leaves either no shard or a whole one. The
// test binary sets IMASHARD_TEST_CRASH_AT in a child process only.
var crashAt = func() int {
	n, _ := strconv.Atoi(os.Getenv("IMASHARD_TEST_CRASH_AT"))
	return n
}()

// Crash points 1 to writeCrashSteps are in writeShard, the rest up to
// snapshotCrashSteps in Snapshot.
const (
	writeCrashSteps    = 6
	snapshotCrashSteps = 8
)

func crashPoint(step int) {
	if crashAt == step {
		os.Exit(75)
	}
}

// writeShard writes parts to a new shard file in dir, as writeShardFrom does.
func writeShard(dir string, sequence uint64, parts ...[]byte) (string, error) {
	readers := make([]io.Reader, len(parts))
	for i, p := range parts {
		readers[i] = bytes.NewReader(p)
	}
	return writeShardFrom(dir, sequence, readers...)
}

// writeShardFrom writes parts to a new shard file in dir: a temporary file,
// fsync, a rename that fails instead of replacing an existing shard, and an
// fsync of the directory so the new name survives a power loss.
func writeShardFrom(dir string, sequence uint64, parts ...io.Reader) (string, error) {
	final := filepath.Join(dir, FileName(sequence))
	if _, err := os.Lstat(final); err == nil {
		return "", fmt.Errorf("%w: %s exists already; shards are never overwritten", ErrDuplicate, final)
	}

	tmp, err := os.CreateTemp(dir, tempPrefix+"*"+tempSuffix)
	if err != nil {
		return "", fmt.Errorf("create temporary shard file: %w", err)
	}
	tmpName := tmp.Name()
	committed := false

	// CreateTemp makes the file 0600. Shards hold no secrets and verifiers
	// often run as another user.
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		os.Remove(tmpName)
		return "", fmt.Errorf("chmod %s: %w", tmpName, err)
	}
	defer func() {
		if !committed {
			tmp.Close()
			os.Remove(tmpName)
		}
	}()
	crashPoint(1)

	for i, p := range parts {
		if _, err := io.Copy(tmp, p); err != nil {
			return "", fmt.Errorf("write %s: %w", tmpName, err)
		}
		if i == 0 {
			crashPoint(2)
		}
	}
	crashPoint(3)

	if err := tmp.Sync(); err != nil {
		return "", fmt.Errorf("fsync %s: %w", tmpName, err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("close %s: %w", tmpName, err)
	}
	crashPoint(4)

	if err := renameNoReplace(tmpName, final); err != nil {
		return "", err
	}
	committed = true
	crashPoint(5)

	if err := syncDir(dir); err != nil {
		return "", err
	}
	crashPoint(6)
	return final, nil
}

// renameNoReplace renames without replacing an existing file. Filesystems
// without RENAME_NOREPLACE get a hard link followed by removal of the old
// name, which also fails when the target exists.
func renameNoReplace(from, to string) error {
	err := unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, to, unix.RENAME_NOREPLACE)
	if err == nil {
		return nil
	}
	if errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("%w: %s exists already; shards are never overwritten", ErrDuplicate, to)
	}
	if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOSYS) {
		return fmt.Errorf("rename %s to %s: %w", from, to, err)
	}

	slog.Info("RENAME_NOREPLACE not supported, using link and unlink", "from", from, "to", to, "err", err)
	if err := os.Link(from, to); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%w: %s exists already; shards are never overwritten", ErrDuplicate, to)
		}
		return fmt.Errorf("link %s to %s: %w", from, to, err)
	}
	if err := os.Remove(from); err != nil {
		slog.Warn("remove temporary shard file after link", "path", from, "err", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open directory for fsync: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}

// removeTempFiles deletes temporary files left by a snapshot that crashed
// before its rename. The caller holds the directory lock, so no other
// snapshot is writing them.
func removeTempFiles(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read chain directory: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, tempPrefix) || !strings.HasSuffix(name, tempSuffix) {
			continue
		}
		path := filepath.Join(dir, name)
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("remove leftover temporary shard file: %w", err)
		}
		slog.Warn("removed temporary shard file left by an interrupted snapshot", "path", path)
	}
	return nil
}
