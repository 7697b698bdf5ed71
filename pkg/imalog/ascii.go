package imalog

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
)

// maxASCIILine bounds one line of an ASCII list: a 4096-byte name plus hex
// fields. ima-buf entries print their buffer in hex, so allow far more.
const maxASCIILine = 2*MaxTemplateDataLen + 1024

// maxNameLines bounds how many lines one name may span when names with
// newlines break the ASCII list.
const maxNameLines = 16

// ASCIIReader reads an ASCII measurement list (ascii_runtime_measurements*)
// and rebuilds each entry's template data, so that its template hash can be
// checked and the entry written as binary.
//
// The ASCII list is lossy where the kernel prints names raw: a name with a
// newline spans lines, and only the template hash shows where it ends. The
// reader joins a line with the following ones only when the entry's template
// hash then verifies; the binary list is authoritative.
type ASCIIReader struct {
	br         *bufio.Reader
	opts       Options
	digestSize int
	order      ByteOrder
	index      int64
	offset     int64 // bytes consumed by complete entries
	line       int64 // lines consumed
	pending    int
	lookahead  []asciiLine // lines read past the current entry, oldest first
	err        error
}

// asciiLine is a line without its newline, whether a newline ended it, and
// the error that reading it returned.
type asciiLine struct {
	text     []byte
	complete bool
	err      error
}

// NewASCIIReader returns a reader of the ASCII list in r. The template hash
// column must have the size of opts' digest algorithm. The ASCII list does
// not show the byte order, so length fields are rebuilt in opts.ByteOrder
// (little-endian for ByteOrderAuto).
func NewASCIIReader(r io.Reader, opts Options) *ASCIIReader {
	rd := &ASCIIReader{br: bufio.NewReaderSize(r, 64<<10), opts: opts, order: opts.ByteOrder}
	if rd.order == ByteOrderAuto {
		rd.order = LittleEndian
	}
	size, err := opts.digestSize()
	rd.digestSize, rd.err = size, err
	return rd
}

// Offset returns the number of bytes consumed by complete entries.
func (r *ASCIIReader) Offset() int64 { return r.offset }

// Pending returns the size of a partial last line left unread when
// AllowTruncated ended the stream.
func (r *ASCIIReader) Pending() int { return r.pending }

// Next returns the next entry, or io.EOF at the end of the list. A last line
// without a newline is an entry, unless AllowTruncated is set: then it is
// pending, because a live list may still be growing.
func (r *ASCIIReader) Next() (*Entry, error) {
	if r.err != nil {
		return nil, r.err
	}
	e, err := r.next()
	if err != nil {
		r.err = err
		return nil, err
	}
	r.index++
	return e, nil
}

func (r *ASCIIReader) next() (*Entry, error) {
	line, complete, err := r.readLine()
	if err != nil {
		return nil, err
	}
	if !complete && r.opts.AllowTruncated {
		r.pending = len(line)
		return nil, io.EOF
	}

	start := r.offset
	consumed := len(line)
	if complete {
		consumed++
	}
	r.line++
	firstLine := r.line
	text := line

	e, err := r.parseLine(text)
	if err != nil {
		return nil, &EntryError{Index: r.index, Offset: start, Line: firstLine, Err: err}
	}
	e.Offset = start

	// A name with newlines continues on the following lines, which then do
	// not start like an entry. Join them only when that makes the hash
	// verify. Otherwise they stay unread and fail as entries of their own.
	if !e.IsViolation() && !r.verifies(e) {
		candidateText := bytes.Clone(text)
		for i := 0; i < maxNameLines-1; i++ {
			next, err := r.peekLine(i)
			if err != nil || looksLikeEntry(next.text, r.digestSize) || (!next.complete && r.opts.AllowTruncated) {
				break
			}
			candidateText = append(append(candidateText, '\n'), next.text...)
			if len(candidateText) > maxASCIILine {
				break
			}
			// A partial join may not parse, as when the last column of
			// an ima-sig entry is still part of the name.
			candidate, err := r.parseLine(candidateText)
			if err != nil || !r.verifies(candidate) {
				continue
			}

			slog.Debug("joined ASCII lines broken by newlines in a name", "line", firstLine, "lines", i+2)
			for _, joined := range r.lookahead[:i+1] {
				r.line++
				consumed += len(joined.text)
				if joined.complete {
					consumed++
				}
			}
			r.lookahead = r.lookahead[i+1:]
			e = candidate
			e.Offset = start
			break
		}
	}

	e.Index = r.index
	r.offset += int64(consumed)
	return e, nil
}

func (r *ASCIIReader) verifies(e *Entry) bool {
	_, err := e.VerifyTemplateHash()
	return err == nil
}

// readLine returns the next line without its newline, and whether a newline
// ended it. It returns io.EOF when nothing is left.
func (r *ASCIIReader) readLine() ([]byte, bool, error) {
	if len(r.lookahead) > 0 {
		l := r.lookahead[0]
		r.lookahead = r.lookahead[1:]
		return l.text, l.complete, l.err
	}
	return r.rawLine()
}

// peekLine returns the line i lines past the current entry, reading ahead
// as needed, or the error that ended the list before it.
func (r *ASCIIReader) peekLine(i int) (asciiLine, error) {
	for len(r.lookahead) <= i {
		if n := len(r.lookahead); n > 0 && r.lookahead[n-1].err != nil {
			return asciiLine{}, r.lookahead[n-1].err
		}
		var l asciiLine
		l.text, l.complete, l.err = r.rawLine()
		r.lookahead = append(r.lookahead, l)
	}
	if err := r.lookahead[i].err; err != nil {
		return asciiLine{}, err
	}
	return r.lookahead[i], nil
}

func (r *ASCIIReader) rawLine() ([]byte, bool, error) {
	var line []byte
	for {
		chunk, err := r.br.ReadSlice('\n')
		if len(line)+len(chunk) > maxASCIILine {
			return nil, false, &EntryError{Index: r.index, Offset: r.offset, Line: r.line + 1,
				Err: fmt.Errorf("%w: line longer than %d bytes", ErrMalformed, maxASCIILine)}
		}
		line = append(line, chunk...)
		switch {
		case err == nil:
			return line[:len(line)-1], true, nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF):
			if len(line) == 0 {
				return nil, false, io.EOF
			}
			return line, false, nil
		default:
			return nil, false, fmt.Errorf("read ASCII list after line %d: %w", r.line, err)
		}
	}
}

// looksLikeEntry reports whether a line starts with a PCR index and a
// template hash column of the list's size.
func looksLikeEntry(line []byte, digestSize int) bool {
	_, rest, err := cutPCR(line)
	if err != nil || len(rest) < 2*digestSize+1 {
		return false
	}
	_, err = hex.Decode(make([]byte, digestSize), rest[:2*digestSize])
	return err == nil && rest[2*digestSize] == ' '
}

func cutPCR(line []byte) (uint32, []byte, error) {
	trimmed := bytes.TrimLeft(line, " ")
	digits, rest, ok := bytes.Cut(trimmed, []byte{' '})
	if !ok {
		return 0, nil, fmt.Errorf("%w: line does not start with a PCR index and a template hash", ErrMalformed)
	}
	pcrIndex, err := strconv.ParseUint(string(digits), 10, 32)
	if err != nil {
		return 0, nil, fmt.Errorf("%w: PCR index %q is not a decimal number", ErrMalformed, digits)
	}
	return uint32(pcrIndex), rest, nil
}

func (r *ASCIIReader) parseLine(line []byte) (*Entry, error) {
	// The kernel prints names up to their NUL, so a NUL never appears.
	if at := bytes.IndexByte(line, 0); at >= 0 {
		return nil, fmt.Errorf("%w: NUL byte at column %d; this is not an ASCII list", ErrMalformed, at+1)
	}
	pcrIndex, rest, err := cutPCR(line)
	if err != nil {
		return nil, err
	}

	hexHash, rest, ok := bytes.Cut(rest, []byte{' '})
	if !ok {
		return nil, fmt.Errorf("%w: no template name after the template hash", ErrMalformed)
	}
	if len(hexHash) != 2*r.digestSize {
		return nil, fmt.Errorf("%w: template hash column has %d hex digits, expected %d for %s: pass the list's algorithm",
			ErrMalformed, len(hexHash), 2*r.digestSize, r.opts.digestAlg())
	}
	digest := make([]byte, r.digestSize)
	if _, err := hex.Decode(digest, hexHash); err != nil {
		return nil, fmt.Errorf("%w: template hash %q is not hex", ErrMalformed, hexHash)
	}

	name, fieldText, _ := bytes.Cut(rest, []byte{' '})
	if len(name) == 0 || len(name) > MaxTemplateNameLen {
		return nil, fmt.Errorf("%w: template name %q is empty or longer than %d bytes", ErrMalformed, name, MaxTemplateNameLen)
	}
	e := &Entry{
		PCR:            pcrIndex,
		TemplateDigest: digest,
		TemplateName:   templateName(name),
		DigestAlg:      r.opts.digestAlg(),
		ByteOrder:      r.order,
	}

	if e.IsLegacy() {
		hexDigest, eventName, ok := bytes.Cut(fieldText, []byte{' '})
		if !ok || len(hexDigest) != 2*legacyDigestSize {
			return nil, fmt.Errorf("%w: legacy ima entry needs a 40-digit hex digest and a name", ErrMalformed)
		}
		if len(eventName) > MaxLegacyNameLen {
			return nil, fmt.Errorf("%w: legacy ima name is %d bytes, more than %d", ErrMalformed, len(eventName), MaxLegacyNameLen)
		}
		data := make([]byte, legacyDigestSize, legacyDigestSize+len(eventName))
		if _, err := hex.Decode(data, hexDigest); err != nil {
			return nil, fmt.Errorf("%w: legacy ima digest %q is not hex", ErrMalformed, hexDigest)
		}
		e.TemplateData = append(data, eventName...)
		return e, nil
	}

	ids, err := TemplateFields(e.TemplateName)
	if err != nil {
		return nil, fmt.Errorf("%w: cannot rebuild its template data from the ASCII list; read the binary list", err)
	}
	columns, err := splitColumns(fieldText, ids)
	if err != nil {
		return nil, err
	}
	e.TemplateData, err = encodeColumns(columns, ids, appendOrderOf(r.order))
	if err != nil {
		return nil, err
	}
	return e, nil
}

// splitColumns splits the field columns. Only a name field (n-ng or n) may
// contain spaces, so the fields before it are cut from the left and the ones
// after it from the right. A missing trailing column, as when tooling strips
// the space that an empty signature leaves at the end of a line, is empty.
func splitColumns(text []byte, ids []string) ([][]byte, error) {
	nameAt := -1
	for i, id := range ids {
		if id == "n-ng" || id == "n" {
			nameAt = i
			break
		}
	}
	columns := make([][]byte, len(ids))
	if nameAt < 0 {
		parts := bytes.SplitN(text, []byte{' '}, len(ids))
		copy(columns, parts)
		return columns, nil
	}

	rest := text
	for i := 0; i < nameAt; i++ {
		column, after, ok := bytes.Cut(rest, []byte{' '})
		if !ok {
			return nil, fmt.Errorf("%w: field %s has no column", ErrMalformed, ids[i])
		}
		columns[i], rest = column, after
	}
	for i := len(ids) - 1; i > nameAt; i-- {
		cut := bytes.LastIndexByte(rest, ' ')
		if cut < 0 {
			// The remaining text is the name, so the trailing columns are
			// missing and taken as empty.
			slog.Debug("ASCII entry has no column for a trailing field; taking it as empty", "field", ids[i])
			break
		}
		columns[i], rest = rest[cut+1:], rest[:cut]
	}
	columns[nameAt] = rest
	return columns, nil
}

func encodeColumns(columns [][]byte, ids []string, order binary.AppendByteOrder) ([]byte, error) {
	var data []byte
	for i, id := range ids {
		field, err := encodeColumn(columns[i], id, order)
		if err != nil {
			return nil, fmt.Errorf("%w: field %s %q: %v", ErrMalformed, id, truncateForMessage(columns[i]), err)
		}
		data = order.AppendUint32(data, uint32(len(field)))
		data = append(data, field...)
	}
	return data, nil
}

func encodeColumn(column []byte, id string, order binary.AppendByteOrder) ([]byte, error) {
	switch id {
	case "n", "n-ng", "xattrnames":
		return append(append([]byte{}, column...), 0), nil
	case "d-ng", "d-ngv2", "d-modsig":
		if len(column) == 0 {
			if id == "d-modsig" {
				return nil, nil
			}
			return nil, errors.New("empty digest")
		}
		cut := bytes.LastIndexByte(column, ':')
		if cut < 0 {
			return nil, errors.New("digest has no algorithm prefix")
		}
		field := append(append([]byte{}, column[:cut+1]...), 0)
		return hex.AppendDecode(field, column[cut+1:])
	case "iuid", "igid", "imode":
		value, err := strconv.ParseUint(string(column), 10, 32)
		if err != nil {
			return nil, err
		}
		if id == "imode" {
			return order.AppendUint16(nil, uint16(value)), nil
		}
		return order.AppendUint32(nil, uint32(value)), nil
	}
	return hex.AppendDecode(nil, column)
}

func truncateForMessage(b []byte) string {
	if len(b) > 64 {
		return string(b[:64]) + "..."
	}
	return string(b)
}
