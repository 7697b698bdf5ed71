package shard

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
)

// File is an open shard file whose header and trailer have been decoded.
// The entry and tail sections stay on disk and are streamed on request, so
// memory does not grow with the number of entries.
type File struct {
	Path        string
	Header      *Header
	HeaderBytes []byte // canonical header, the input of the quote's qualifying data
	Trailer     Trailer
	Size        int64

	f            *os.File
	entriesStart int64
	trailerStart int64
}

// Open decodes the header and trailer of the shard file at path and checks
// that the section sizes in the header add up to the file size.
func Open(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open shard: %w", err)
	}
	sf, err := decodeFile(f, path)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("shard %s: %w", path, err)
	}
	return sf, nil
}

func decodeFile(f *os.File, path string) (*File, error) {
	info, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !info.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: not a regular file (mode %s): pass a shard-NNNNNNNNNN.ims file", ErrMalformed, info.Mode())
	}
	size := info.Size()

	prefix := make([]byte, prefixSize)
	if n, err := io.ReadFull(f, prefix); err != nil {
		return nil, fmt.Errorf("%w: file is %d bytes, the prefix needs %d", ErrTruncated, n, prefixSize)
	}
	n, err := parsePrefix(prefix)
	if err != nil {
		return nil, err
	}
	if size < int64(prefixSize+n) {
		return nil, fmt.Errorf("%w: file is %d bytes, the header ends at %d", ErrTruncated, size, prefixSize+n)
	}
	headerBytes := make([]byte, prefixSize+n)
	copy(headerBytes, prefix)
	if _, err := io.ReadFull(f, headerBytes[prefixSize:]); err != nil {
		return nil, fmt.Errorf("read header: %w", err)
	}
	h, err := UnmarshalHeader(headerBytes)
	if err != nil {
		return nil, err
	}

	entriesStart := int64(len(headerBytes))
	trailerStart := entriesStart + h.Entries.Size + h.Tail.Size
	if trailerStart+8 > size {
		return nil, fmt.Errorf("%w: file is %d bytes, header declares %d entry bytes and %d tail bytes ending at %d plus the quote", ErrTruncated, size, h.Entries.Size, h.Tail.Size, trailerStart)
	}
	if size-trailerStart > 2*(maxQuotePartSize+4) {
		return nil, fmt.Errorf("%w: %d bytes after the tail at offset %d, more than a quote can take", ErrMalformed, size-trailerStart, trailerStart)
	}
	trailerBytes := make([]byte, size-trailerStart)
	if _, err := f.ReadAt(trailerBytes, trailerStart); err != nil {
		return nil, fmt.Errorf("read quote at offset %d: %w", trailerStart, err)
	}
	trailer, err := UnmarshalTrailer(trailerBytes, trailerStart)
	if err != nil {
		return nil, err
	}

	return &File{
		Path:         path,
		Header:       h,
		HeaderBytes:  headerBytes,
		Trailer:      trailer,
		Size:         size,
		f:            f,
		entriesStart: entriesStart,
		trailerStart: trailerStart,
	}, nil
}

// Entries returns a reader over the entry section, byte-exact as the kernel
// wrote the entries.
func (sf *File) Entries() io.Reader {
	return io.NewSectionReader(sf.f, sf.entriesStart, sf.Header.Entries.Size)
}

// TailEntries returns a reader over the tail section.
func (sf *File) TailEntries() io.Reader {
	return io.NewSectionReader(sf.f, sf.entriesStart+sf.Header.Entries.Size, sf.Header.Tail.Size)
}

// EntriesOffset returns the file offset of the entry section, for error
// messages that name a byte position in the file.
func (sf *File) EntriesOffset() int64 { return sf.entriesStart }

// Digest returns the SHA-256 of the whole file, the value the next shard
// records as its previous-shard digest.
func (sf *File) Digest() ([]byte, error) {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(sf.f, 0, sf.Size)); err != nil {
		return nil, fmt.Errorf("hash shard %s: %w", sf.Path, err)
	}
	return h.Sum(nil), nil
}

// Close closes the underlying file.
func (sf *File) Close() error {
	return sf.f.Close()
}

// CheckSections streams the entry and tail sections and compares their
// sizes and SHA-256 digests with the header.
func (sf *File) CheckSections() error {
	for _, s := range []struct {
		name string
		r    io.Reader
		want Section
	}{
		{"entry section", sf.Entries(), sf.Header.Entries},
		{"tail section", sf.TailEntries(), sf.Header.Tail},
	} {
		h := sha256.New()
		n, err := io.Copy(h, s.r)
		if err != nil {
			return fmt.Errorf("shard %s: read %s: %w", sf.Path, s.name, err)
		}
		if n != s.want.Size {
			return fmt.Errorf("shard %s: %w: %s is %d bytes but the header records %d: the file is cut short or damaged; restore it from a copy", sf.Path, ErrTruncated, s.name, n, s.want.Size)
		}
		if got := h.Sum(nil); !equalBytes(got, s.want.Digest) {
			return fmt.Errorf("shard %s: %w: %s SHA-256 is %x but the header records %x: the file was changed after the quote", sf.Path, ErrHeaderMismatch, s.name, got, s.want.Digest)
		}
	}
	return nil
}

func equalBytes(a, b []byte) bool {
	return len(a) == len(b) && string(a) == string(b)
}

// isNotShard reports errors that mean the file is not a readable shard at all.
func isNotShard(err error) bool {
	return errors.Is(err, ErrMalformed) || errors.Is(err, ErrTruncated) || errors.Is(err, ErrUnknownVersion)
}
