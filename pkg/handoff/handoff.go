// Package handoff carries files from a running Linux system to the next
// kernel started with kexec. It appends them to the next kernel's initrd as
// an uncompressed newc cpio archive and loads the kernel with kexec_load or
// kexec_file_load. In the next boot, Keep copies the carried files into place.
//
// The package does not depend on the shard format. Callers pass shards as
// files, so the same mechanism carries the next kernel and initrd for
// further kexecs.
package handoff

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// ShardDir is the directory, relative to the root of the next boot's
// initramfs, that holds the carried shards. The next boot finds them at
// "/" + ShardDir.
const ShardDir = "imashard/handoff/shards"

// ErrInvalidPath marks a carried path that cannot be placed in the archive,
// such as one that climbs out of the root with "..".
var ErrInvalidPath = errors.New("invalid path for the initramfs archive")

// File is one regular file to place in the next boot's initramfs.
type File struct {
	Path string      // path inside the archive, relative to its root, slash-separated
	Data []byte      // contents
	Mode fs.FileMode // permission bits; zero means 0644
}

// archivePath turns a host path into its path inside the archive: absolute
// paths keep their place below the root, so "/carry/vmlinuz" is at
// "/carry/vmlinuz" in the next boot too.
func archivePath(p string) (string, error) {
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("%w: %q is relative; give an absolute path", ErrInvalidPath, p)
	}
	rel := strings.TrimPrefix(path.Clean(filepath.ToSlash(p)), "/")
	if rel == "" {
		return "", fmt.Errorf("%w: %q is the root itself; name a file or a directory below it", ErrInvalidPath, p)
	}
	return rel, nil
}

// ReadCarry reads the given files, and every regular file below the given
// directories, into memory. Each keeps its absolute path in the archive.
// Reading happens now because on a measured system every open of a file is
// logged: the caller reads before it takes the final snapshot.
func ReadCarry(paths []string) ([]File, error) {
	var files []File
	for _, p := range paths {
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, fmt.Errorf("carry %q: %w", p, err)
		}
		err = filepath.WalkDir(abs, func(name string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() {
				return nil
			}
			if !d.Type().IsRegular() {
				return fmt.Errorf("%s is not a regular file or directory (mode %v); carry only files and directories", name, d.Type())
			}
			info, err := d.Info()
			if err != nil {
				return err
			}
			data, err := os.ReadFile(name)
			if err != nil {
				return err
			}
			rel, err := archivePath(name)
			if err != nil {
				return err
			}
			files = append(files, File{Path: rel, Data: data, Mode: info.Mode().Perm()})
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("carry %q: %w", p, err)
		}
	}
	return files, nil
}

// ReadDir reads the regular files directly inside dir and places them under
// archiveDir, sorted by name. Subdirectories are skipped.
func ReadDir(dir, archiveDir string) ([]File, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read directory %s: %w", dir, err)
	}
	var files []File
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		name := filepath.Join(dir, e.Name())
		data, err := os.ReadFile(name)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", name, err)
		}
		files = append(files, File{Path: path.Join(archiveDir, e.Name()), Data: data, Mode: 0o644})
	}
	return files, nil
}

// BuildInitrd returns base followed by zero padding to a 4-byte boundary and
// an uncompressed newc cpio archive holding files and their parent
// directories. The kernel unpacks concatenated archives in order, but it
// reports "invalid magic" and drops an archive that does not start on a
// 4-byte boundary, hence the padding. base may be compressed or not.
func BuildInitrd(base []byte, files []File) ([]byte, error) {
	var buf bytes.Buffer
	buf.Grow(len(base) + 3 + archiveSize(files))
	buf.Write(base)
	for buf.Len()%4 != 0 {
		buf.WriteByte(0)
	}

	w := &newcWriter{buf: &buf}
	seen := map[string]bool{}
	for _, f := range files {
		p := strings.TrimPrefix(path.Clean("/"+f.Path), "/")
		if p == "" || p != strings.TrimPrefix(f.Path, "/") {
			return nil, fmt.Errorf("%w: %q is not a clean path below the root", ErrInvalidPath, f.Path)
		}
		if seen[p] {
			return nil, fmt.Errorf("%w: %q appears twice; each file can be carried once", ErrInvalidPath, f.Path)
		}
		seen[p] = true

		// Parents first, because the kernel creates entries in archive
		// order and does not create missing directories.
		for _, dir := range parents(p) {
			if seen[dir] {
				continue
			}
			seen[dir] = true
			w.writeRecord(dir, modeDir|0o755, nil)
		}
		mode := uint32(f.Mode.Perm())
		if mode == 0 {
			mode = 0o644
		}
		w.writeRecord(p, modeRegular|mode, f.Data)
	}
	w.writeTrailer()
	return buf.Bytes(), nil
}

func archiveSize(files []File) int {
	n := 512
	for _, f := range files {
		n += 110 + len(f.Path) + len(f.Data) + 8
	}
	return n
}

func parents(p string) []string {
	var dirs []string
	for dir := path.Dir(p); dir != "." && dir != "/"; dir = path.Dir(dir) {
		dirs = append([]string{dir}, dirs...)
	}
	return dirs
}
