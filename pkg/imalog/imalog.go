// Package imalog reads and writes Linux IMA measurement lists exactly as the
// kernel writes them to securityfs: the binary lists
// (binary_runtime_measurements and the per-bank binary_runtime_measurements_<alg>
// files of Linux 6.10 and later) and the ASCII lists
// (ascii_runtime_measurements*).
//
// Readers stream one entry at a time, keep every entry byte-exact (Raw and
// TemplateData are the bytes the kernel wrote and hashed), and validate every
// length field before allocating for it.
package imalog

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/imashard/imashard/pkg/pcr"
)

// ByteOrder is the byte order of the integers in a binary list. The kernel
// writes host order, or little-endian when booted with ima_canonical_fmt.
type ByteOrder int

// Byte orders. ByteOrderAuto detects the order from the first entry.
const (
	ByteOrderAuto ByteOrder = iota
	LittleEndian
	BigEndian
)

// String returns "auto", "little-endian" or "big-endian".
func (o ByteOrder) String() string {
	switch o {
	case ByteOrderAuto:
		return "auto"
	case LittleEndian:
		return "little-endian"
	case BigEndian:
		return "big-endian"
	}
	return "ByteOrder(" + strconv.Itoa(int(o)) + ")"
}

// ParseByteOrder accepts "auto", "le", "little", "little-endian", "be",
// "big", "big-endian" and "canonical" (little-endian).
func ParseByteOrder(s string) (ByteOrder, error) {
	switch strings.ToLower(s) {
	case "", "auto":
		return ByteOrderAuto, nil
	case "le", "little", "little-endian", "canonical":
		return LittleEndian, nil
	case "be", "big", "big-endian":
		return BigEndian, nil
	}
	return 0, fmt.Errorf("invalid byte order %q: use auto, le or be", s)
}

// Options describe how to read a list.
type Options struct {
	// DigestAlg is the algorithm of the template digest field (the file's
	// bank). Zero means SHA-1, as in the legacy binary_runtime_measurements.
	DigestAlg pcr.Alg
	// DigestSize is the template digest field size in bytes. Zero means
	// DigestAlg.Size(). It is required for _tpm_alg_<hex> files, whose
	// algorithm the kernel could not hash.
	DigestSize int
	// ByteOrder forces the byte order of binary lists and of the length
	// fields rebuilt from ASCII lists. ByteOrderAuto detects it for binary
	// lists and means little-endian for ASCII lists.
	ByteOrder ByteOrder
	// AllowTruncated makes a partial last entry end the stream with io.EOF
	// (a live, growing file) instead of an error.
	AllowTruncated bool
}

func (o Options) digestAlg() pcr.Alg {
	if o.DigestAlg == 0 {
		return pcr.SHA1
	}
	return o.DigestAlg
}

func (o Options) digestSize() (int, error) {
	if o.DigestSize < 0 || o.DigestSize > MaxDigestSize {
		return 0, fmt.Errorf("%w: digest size %d bytes is outside 1..%d", ErrInvalidOptions, o.DigestSize, MaxDigestSize)
	}
	if o.DigestSize > 0 {
		return o.DigestSize, nil
	}
	size := o.digestAlg().Size()
	if size == 0 {
		return 0, fmt.Errorf("%w: digest size of %s is unknown: set Options.DigestSize", ErrInvalidOptions, o.digestAlg())
	}
	return size, nil
}

// Limits applied before allocating. The kernel's own limits are far lower
// except for template data, whose ima-buf field carries buffers such as
// device-mapper tables and keys.
const (
	MaxDigestSize       = 64       // SHA-512, the largest digest a PCR bank has
	MaxTemplateNameLen  = 255      // 15 field ids of up to 15 bytes, joined by '|'
	MaxTemplateDataLen  = 16 << 20 // 16 MiB
	MaxLegacyNameLen    = 255      // the legacy ima template hashes the name padded to 256 bytes
	legacyDigestSize    = 20
	legacyHashedNameLen = 256
)

// Sentinel errors, to test with errors.Is.
var (
	// ErrTruncated: the stream ends inside an entry.
	ErrTruncated = errors.New("truncated entry")
	// ErrMalformed: an entry or field breaks the kernel's format.
	ErrMalformed = errors.New("malformed entry")
	// ErrTemplateHash: the template digest does not match the template data.
	ErrTemplateHash = errors.New("template hash mismatch")
	// ErrInvalidOptions: the Options cannot describe any list.
	ErrInvalidOptions = errors.New("invalid reader options")
)

// EntryError names the entry and byte offset where reading or checking failed.
type EntryError struct {
	Index  int64 // entry index, from 0
	Offset int64 // byte offset of the entry in the stream (binary lists)
	Line   int64 // line number from 1 (ASCII lists), 0 for binary lists
	Err    error
}

func (e *EntryError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("entry %d (line %d): %v", e.Index, e.Line, e.Err)
	}
	return fmt.Sprintf("entry %d at byte offset %d: %v", e.Index, e.Offset, e.Err)
}

func (e *EntryError) Unwrap() error { return e.Err }

// Entry is one measurement list entry.
type Entry struct {
	Index          int64  // position in the stream, from 0
	Offset         int64  // byte offset of the entry in the stream
	PCR            uint32 // PCR index the kernel extended
	TemplateDigest []byte // as in the file, DigestSize bytes
	TemplateName   string
	// TemplateData is, for every template but the legacy "ima", the template
	// data exactly as in the file (what the kernel hashed). For the legacy
	// "ima" template it is the 20-byte file digest followed by the name.
	TemplateData []byte
	// Raw is the whole entry exactly as in the file (binary lists only).
	Raw []byte
	// DigestAlg is the algorithm of TemplateDigest (the list's bank); it may
	// be an algorithm that pcr cannot compute.
	DigestAlg pcr.Alg
	// ByteOrder is the byte order of the integers in TemplateData.
	ByteOrder ByteOrder
}

// Clone returns a copy of e that shares no bytes with it, for keeping an
// entry read by Reader.NextInto past the reuse of its buffer.
func (e *Entry) Clone() *Entry {
	c := *e
	c.Raw = bytes.Clone(e.Raw)
	c.TemplateData = bytes.Clone(e.TemplateData)
	c.TemplateDigest = bytes.Clone(e.TemplateDigest)
	return &c
}

// IsLegacy reports whether the entry uses the legacy "ima" template.
func (e *Entry) IsLegacy() bool { return e.TemplateName == "ima" }

// IsViolation reports an all-zero template digest, which the kernel writes
// for a measurement violation (a file opened for write while measured).
func (e *Entry) IsViolation() bool {
	for _, b := range e.TemplateDigest {
		if b != 0 {
			return false
		}
	}
	return len(e.TemplateDigest) > 0
}

// TemplateHash returns H_alg of what the kernel hashed: the template data,
// or for the legacy "ima" template the file digest followed by the name
// zero-padded to 256 bytes.
func (e *Entry) TemplateHash(alg pcr.Alg) ([]byte, error) {
	h, err := alg.New()
	if err != nil {
		return nil, err
	}
	if !e.IsLegacy() {
		h.Write(e.TemplateData)
		return h.Sum(nil), nil
	}

	var buf [legacyDigestSize + legacyHashedNameLen]byte
	if err := fillLegacyHashInput(buf[:], e.TemplateData); err != nil {
		return nil, err
	}
	h.Write(buf[:])
	return h.Sum(nil), nil
}

// fillLegacyHashInput writes digest || name zero-padded to 256 bytes into
// buf, which must be 276 zeroed bytes.
func fillLegacyHashInput(buf, data []byte) error {
	if len(data) < legacyDigestSize {
		return fmt.Errorf("%w: legacy ima template data is %d bytes, shorter than its 20-byte digest", ErrMalformed, len(data))
	}
	if len(data)-legacyDigestSize > MaxLegacyNameLen {
		return fmt.Errorf("%w: legacy ima name is %d bytes, more than %d", ErrMalformed, len(data)-legacyDigestSize, MaxLegacyNameLen)
	}
	copy(buf, data)
	return nil
}

// VerifyTemplateHash compares the template digest with the template hash in
// the entry's DigestAlg. It returns nil for violations, whose digest is never
// checked. padded is true when the digest is the SHA-1 template hash
// zero-padded to the bank size, which a kernel writes for a bank it cannot
// hash. The error wraps ErrTemplateHash or pcr.ErrUnsupportedAlg.
func (e *Entry) VerifyTemplateHash() (padded bool, err error) {
	if e.IsViolation() {
		return false, nil
	}

	alg := e.DigestAlg
	if alg == 0 {
		alg = pcr.SHA1
	}
	if alg.Known() && alg.Size() == len(e.TemplateDigest) {
		want, err := e.TemplateHash(alg)
		if err != nil && !errors.Is(err, pcr.ErrUnsupportedAlg) {
			return false, err
		}
		if err == nil && bytes.Equal(want, e.TemplateDigest) {
			return false, nil
		}
	}

	if len(e.TemplateDigest) > legacyDigestSize {
		sha1Hash, err := e.TemplateHash(pcr.SHA1)
		if err != nil {
			return false, err
		}
		if bytes.Equal(e.TemplateDigest[:legacyDigestSize], sha1Hash) && isZero(e.TemplateDigest[legacyDigestSize:]) {
			return true, nil
		}
	}

	if !alg.Known() || alg.Size() != len(e.TemplateDigest) {
		return false, fmt.Errorf("%w: cannot check a %d-byte %s template digest", pcr.ErrUnsupportedAlg, len(e.TemplateDigest), alg)
	}
	if _, err := alg.New(); err != nil {
		return false, err
	}
	want, _ := e.TemplateHash(alg)
	return false, fmt.Errorf("%w: template digest %x, but %s of the template data is %x", ErrTemplateHash, e.TemplateDigest, alg, want)
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// The securityfs directory and list names the kernel uses.
const (
	SecurityfsDir   = "/sys/kernel/security/ima"
	BinaryListName  = "binary_runtime_measurements"
	ASCIIListName   = "ascii_runtime_measurements"
	DefaultListPath = SecurityfsDir + "/" + BinaryListName
)

// ListInfo is the format and Options derived from a list's file name.
type ListInfo struct {
	ASCII   bool
	Options Options
}

// InfoFromFileName derives the list format and Options from a securityfs
// file name: binary_runtime_measurements (SHA-1), binary_runtime_measurements_<alg>,
// binary_runtime_measurements_tpm_alg_<hex> (digest size unknown: the caller
// must set DigestSize) and the ascii_runtime_measurements* twins. Names with a
// _staged suffix (Linux 7.2 CONFIG_IMA_STAGING) are accepted. ok is false for
// other names.
func InfoFromFileName(name string) (info ListInfo, ok bool) {
	base := strings.TrimSuffix(filepath.Base(name), "_staged")
	var rest string
	switch {
	case strings.HasPrefix(base, BinaryListName):
		rest = strings.TrimPrefix(base, BinaryListName)
	case strings.HasPrefix(base, ASCIIListName):
		rest = strings.TrimPrefix(base, ASCIIListName)
		info.ASCII = true
	default:
		return ListInfo{}, false
	}

	if rest == "" {
		info.Options.DigestAlg = pcr.SHA1
		return info, true
	}
	if !strings.HasPrefix(rest, "_") {
		return ListInfo{}, false
	}
	rest = strings.ToLower(rest[1:])
	if hex, found := strings.CutPrefix(rest, "tpm_alg_"); found {
		id, err := strconv.ParseUint(strings.TrimPrefix(hex, "0x"), 16, 16)
		if err != nil {
			return ListInfo{}, false
		}
		info.Options.DigestAlg = pcr.Alg(id)
		return info, true
	}
	alg, err := pcr.ParseAlg(rest)
	if err != nil {
		return ListInfo{}, false
	}
	info.Options.DigestAlg = alg
	return info, true
}
