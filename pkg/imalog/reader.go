package imalog

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
)

// readerBufferSize holds every entry the kernel writes for files in one
// buffer, so most entries are framed without copying twice.
const readerBufferSize = 64 << 10

// Reader reads a binary measurement list one entry at a time.
type Reader struct {
	br         *bufio.Reader
	opts       Options
	digestSize int
	order      binary.ByteOrder
	byteOrder  ByteOrder
	index      int64
	offset     int64
	pending    int
	err        error // sticky: returned by every Next after the first error or EOF

	// Entries and their bytes are carved from slabs, so reading costs about
	// one allocation per few hundred entries. Slabs are never written twice,
	// so returned entries stay valid; a kept entry keeps its slab alive.
	entrySlab []Entry
	byteSlab  []byte
}

const (
	entrySlabLen  = 256
	byteSlabBytes = 64 << 10
)

// NewReader returns a reader of the binary list in r. Invalid Options are
// reported by the first call to Next.
func NewReader(r io.Reader, opts Options) *Reader {
	rd := &Reader{br: bufio.NewReaderSize(r, readerBufferSize), opts: opts, byteOrder: opts.ByteOrder}
	size, err := opts.digestSize()
	if err != nil {
		rd.err = err
	}
	rd.digestSize = size
	switch opts.ByteOrder {
	case LittleEndian:
		rd.order = binary.LittleEndian
	case BigEndian:
		rd.order = binary.BigEndian
	case ByteOrderAuto:
	default:
		rd.err = fmt.Errorf("%w: byte order %d", ErrInvalidOptions, int(opts.ByteOrder))
	}
	return rd
}

// ByteOrder returns the forced byte order, or the detected one once the
// first entry has been read (ByteOrderAuto before that).
func (r *Reader) ByteOrder() ByteOrder { return r.byteOrder }

// Offset returns the number of bytes consumed by complete entries.
func (r *Reader) Offset() int64 { return r.offset }

// Pending returns the size in bytes of a partial last entry left unread when
// AllowTruncated ended the stream.
func (r *Reader) Pending() int { return r.pending }

// Entries returns the number of complete entries read.
func (r *Reader) Entries() int64 { return r.index }

// Next returns the next entry, or io.EOF at a clean end of the list. The
// reader never reuses an entry or its slices. After an error every call
// returns the same error.
func (r *Reader) Next() (*Entry, error) {
	if len(r.entrySlab) == 0 {
		r.entrySlab = make([]Entry, entrySlabLen)
	}
	e := &r.entrySlab[0]
	if err := r.advance(e, nil); err != nil {
		return nil, err
	}
	if len(e.Raw) > r.br.Size() {
		// An entry larger than the buffer has an array of its own. A slab
		// slot would keep that array alive as long as any entry of the
		// slab, so up to entrySlabLen large entries at once.
		own := *e
		*e = Entry{}
		return &own, nil
	}
	r.entrySlab = r.entrySlab[1:]
	return e, nil
}

// NextInto is Next for a caller that reuses its entries: it reads the next
// entry into e and appends the entry's bytes to buf, returning buf. e's
// slices point into the returned buf, or into an array of their own for an
// entry larger than the reader's buffer, so reusing e and buf costs no
// allocation. The caller must not reuse buf while it needs e.
func (r *Reader) NextInto(e *Entry, buf []byte) ([]byte, error) {
	err := r.advance(e, &buf)
	return buf, err
}

// advance reads the next entry into e, with its bytes in *buf, or in the
// reader's slab when buf is nil.
func (r *Reader) advance(e *Entry, buf *[]byte) error {
	if r.err != nil {
		return r.err
	}
	if err := r.next(e, buf); err != nil {
		r.err = err
		return err
	}
	r.index++
	r.offset += int64(len(e.Raw))
	return nil
}

func (r *Reader) next(e *Entry, buf *[]byte) error {
	headerLen := 4 + r.digestSize + 4
	header, err := r.br.Peek(headerLen)
	if err != nil {
		if len(header) == 0 && errors.Is(err, io.EOF) {
			return io.EOF
		}
		return r.truncated(len(header), headerLen, err)
	}

	if r.order == nil {
		if err := r.detectByteOrder(header); err != nil {
			return err
		}
	}

	nameLen := r.order.Uint32(header[4+r.digestSize:])
	if nameLen == 0 || nameLen > MaxTemplateNameLen {
		return r.malformed("template name length %d is outside 1..%d: the list is not a binary IMA list, or its byte order or digest size (%d bytes) is wrong", nameLen, MaxTemplateNameLen, r.digestSize)
	}

	// The size of the rest depends on the template: peek the name and the
	// length field that follows it.
	fixedLen := headerLen + int(nameLen) + 4
	head, err := r.br.Peek(fixedLen)
	if err != nil {
		return r.truncated(len(head), fixedLen, err)
	}
	name := head[headerLen : headerLen+int(nameLen)]
	legacy := string(name) == "ima"

	var total int64
	if legacy {
		// Legacy "ima": a 20-byte file digest with no length, then the name
		// with a length and without a NUL.
		fixedLen = headerLen + int(nameLen) + legacyDigestSize + 4
		head, err = r.br.Peek(fixedLen)
		if err != nil {
			return r.truncated(len(head), fixedLen, err)
		}
		eventNameLen := r.order.Uint32(head[fixedLen-4:])
		if eventNameLen > MaxLegacyNameLen {
			return r.malformed("legacy ima name length %d is more than %d", eventNameLen, MaxLegacyNameLen)
		}
		total = int64(fixedLen) + int64(eventNameLen)
	} else {
		dataLen := r.order.Uint32(head[fixedLen-4:])
		if dataLen > MaxTemplateDataLen {
			return r.malformed("template data length %d is more than the limit of %d bytes", dataLen, MaxTemplateDataLen)
		}
		total = int64(fixedLen) + int64(dataLen)
	}

	raw, err := r.readEntry(int(total), buf)
	if err != nil {
		return err
	}

	*e = Entry{
		Index:          r.index,
		Offset:         r.offset,
		PCR:            r.order.Uint32(raw),
		TemplateDigest: raw[4 : 4+r.digestSize : 4+r.digestSize],
		TemplateName:   templateName(raw[headerLen : headerLen+int(nameLen)]),
		Raw:            raw,
		DigestAlg:      r.opts.digestAlg(),
		ByteOrder:      r.byteOrder,
	}
	if legacy {
		// Join digest and name without the length between them; this is
		// the only copy the reader makes of an entry.
		digestStart := headerLen + int(nameLen)
		size := legacyDigestSize + len(raw) - fixedLen
		var data []byte
		if buf != nil {
			start := len(*buf)
			*buf = append(*buf, raw[digestStart:digestStart+legacyDigestSize]...)
			*buf = append(*buf, raw[fixedLen:]...)
			data = (*buf)[start : start+size : start+size]
		} else {
			data = make([]byte, 0, size)
			data = append(data, raw[digestStart:digestStart+legacyDigestSize]...)
			data = append(data, raw[fixedLen:]...)
		}
		e.TemplateData = data
	} else {
		e.TemplateData = raw[fixedLen:len(raw):len(raw)]
	}
	return nil
}

// readEntry returns the next n bytes, appended to *buf when buf is not
// nil, else in a new slice. Entries that fit the buffer are peeked first,
// so a truncated one costs no allocation. Larger ones grow their slice only
// as bytes arrive, so a length field alone never sizes an allocation.
func (r *Reader) readEntry(n int, buf *[]byte) ([]byte, error) {
	if n <= r.br.Size() {
		peeked, err := r.br.Peek(n)
		if err != nil {
			return nil, r.truncated(len(peeked), n, err)
		}
		if buf != nil {
			start := len(*buf)
			*buf = append(*buf, peeked...)
			_, _ = r.br.Discard(n)
			return (*buf)[start : start+n : start+n], nil
		}
		if len(r.byteSlab) < n {
			r.byteSlab = make([]byte, max(byteSlabBytes, n))
		}
		raw := r.byteSlab[:n:n]
		r.byteSlab = r.byteSlab[n:]
		copy(raw, peeked)
		_, _ = r.br.Discard(n)
		return raw, nil
	}

	// The slice doubles as bytes arrive, up to exactly n, so the entry
	// keeps n bytes and not up to twice that.
	raw := make([]byte, 0, min(n, 16<<10))
	for len(raw) < n {
		if len(raw) == cap(raw) {
			grown := make([]byte, len(raw), min(2*len(raw), n))
			copy(grown, raw)
			raw = grown
		}
		got, err := io.ReadFull(r.br, raw[len(raw):min(cap(raw), n)])
		raw = raw[:len(raw)+got]
		if err != nil {
			// The bytes are consumed now, so Pending counts them for the
			// caller that re-reads the file from Offset.
			return nil, r.truncated(len(raw), n, err)
		}
	}
	return raw, nil
}

func (r *Reader) detectByteOrder(header []byte) error {
	nameAt := 4 + r.digestSize
	plausible := func(order binary.ByteOrder) bool {
		nameLen := order.Uint32(header[nameAt:])
		return order.Uint32(header) <= 0xffff && nameLen > 0 && nameLen <= MaxTemplateNameLen
	}
	switch {
	case plausible(binary.LittleEndian):
		r.order, r.byteOrder = binary.LittleEndian, LittleEndian
	case plausible(binary.BigEndian):
		r.order, r.byteOrder = binary.BigEndian, BigEndian
	default:
		return r.malformed("PCR index %#x and template name length %#x are implausible in either byte order: the input is not a binary IMA list with %d-byte template digests (for a per-bank list, name its algorithm, for example with --bank sha256)", header[:4], header[nameAt:nameAt+4], r.digestSize)
	}
	slog.Debug("detected byte order of the measurement list", "byte_order", r.byteOrder.String())
	return nil
}

func (r *Reader) truncated(have, need int, err error) error {
	if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		return &EntryError{Index: r.index, Offset: r.offset, Err: fmt.Errorf("read failed: %w", err)}
	}
	if r.opts.AllowTruncated {
		r.pending = have
		slog.Debug("partial last entry left unread", "entries", r.index, "offset", r.offset, "pending_bytes", have)
		return io.EOF
	}
	return &EntryError{Index: r.index, Offset: r.offset, Err: fmt.Errorf(
		"%w: the stream ends after %d of at least %d bytes of this entry, following %d complete entries (%d bytes); for a live list read it again or allow a truncated last entry",
		ErrTruncated, have, need, r.index, r.offset)}
}

func (r *Reader) malformed(format string, args ...any) error {
	return &EntryError{Index: r.index, Offset: r.offset, Err: fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)}
}

// templateName returns a shared string for the kernel's template names, so
// reading an entry allocates only its bytes and the Entry.
func templateName(b []byte) string {
	switch string(b) {
	case "ima-ng":
		return "ima-ng"
	case "ima-sig":
		return "ima-sig"
	case "ima":
		return "ima"
	case "ima-buf":
		return "ima-buf"
	case "ima-ngv2":
		return "ima-ngv2"
	case "ima-sigv2":
		return "ima-sigv2"
	case "ima-modsig":
		return "ima-modsig"
	case "evm-sig":
		return "evm-sig"
	}
	return string(b)
}
