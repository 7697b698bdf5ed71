// Package vmtest runs a package's Go test binary as /init of a kernel under
// QEMU with a swtpm TPM, through the shared harness in qemu/vm, so package
// tests can check their code against a real kernel.
package vmtest

import (
	"bytes"
	"fmt"
	"sort"
)

// File is one regular file or directory of an initramfs.
type File struct {
	Mode uint32 // permission bits; a directory when Dir is set
	Dir  bool
	Data []byte
}

// NewcArchive returns an uncompressed newc cpio archive of files, keyed by
// path without a leading slash. Parent directories must be listed
// explicitly. The kernel unpacks it as the initramfs.
func NewcArchive(files map[string]File) ([]byte, error) {
	var buf bytes.Buffer
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)

	ino := uint32(1)
	for _, name := range names {
		f := files[name]
		mode := f.Mode & 0o7777
		if f.Dir {
			mode |= 0o040000
		} else {
			mode |= 0o100000
		}
		if err := writeNewc(&buf, name, ino, mode, f.Data); err != nil {
			return nil, err
		}
		ino++
	}
	if err := writeNewc(&buf, "TRAILER!!!", 0, 0, nil); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func writeNewc(buf *bytes.Buffer, name string, ino, mode uint32, data []byte) error {
	if len(data) > 0xFFFFFFFF {
		return fmt.Errorf("cpio: %s is larger than 4 GiB", name)
	}
	nlink := 1
	if mode&0o040000 != 0 {
		nlink = 2
	}
	fmt.Fprintf(buf, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	buf.WriteString(name)
	buf.WriteByte(0)
	pad4(buf)
	buf.Write(data)
	pad4(buf)
	return nil
}

func pad4(buf *bytes.Buffer) {
	for buf.Len()%4 != 0 {
		buf.WriteByte(0)
	}
}
