package handoff

import (
	"bytes"
	"fmt"
)

// The "new ASCII" (newc) cpio format the kernel unpacks an initramfs from
// (Documentation/driver-api/early-userspace/buffer-format.rst): a 110-byte
// header of the magic and 13 eight-digit hexadecimal fields, the name with
// its NUL, padding to 4 bytes, the data, padding to 4 bytes. imashard only
// writes such archives, so a writer of its own replaces u-root's pkg/cpio,
// which pulls about 330 KB of reading and listing code into the binary.
const (
	newcMagic   = "070701"
	newcTrailer = "TRAILER!!!"
	modeDir     = 0o040000
	modeRegular = 0o100000
)

// newcWriter appends records to an archive. Inode numbers count from 1, so
// no two records look like hard links to the kernel.
type newcWriter struct {
	buf *bytes.Buffer
	ino uint32
}

// writeRecord appends one record: a directory (no data) or a regular file.
func (w *newcWriter) writeRecord(name string, mode uint32, data []byte) {
	w.ino++
	nlink := uint32(1)
	if mode&modeDir != 0 {
		nlink = 2
	}
	w.header(w.ino, mode, nlink, uint32(len(data)), name)
	w.buf.Write(data)
	w.pad()
}

// writeTrailer ends the archive with the record the kernel stops at.
func (w *newcWriter) writeTrailer() {
	w.header(0, 0, 1, 0, newcTrailer)
}

func (w *newcWriter) header(ino, mode, nlink, size uint32, name string) {
	// ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
	// rdevmajor, rdevminor, namesize (with the NUL), check.
	fmt.Fprintf(w.buf, "%s%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		newcMagic, ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(name)+1, 0)
	w.buf.WriteString(name)
	w.buf.WriteByte(0)
	w.pad()
}

// pad aligns the archive, which starts on a 4-byte boundary, to 4 bytes.
func (w *newcWriter) pad() {
	for w.buf.Len()%4 != 0 {
		w.buf.WriteByte(0)
	}
}
