package imalog

import (
	"encoding/hex"
	"fmt"
	"io"
	"strconv"
	"unicode/utf8"
)

// Writer writes entries as a binary list, in the byte order the kernel would
// use, so that reading a list and writing its entries reproduces it bit for
// bit.
type Writer struct {
	w     io.Writer
	order ByteOrder
	buf   []byte
	n     int64
}

// NewWriter returns a writer of a binary list. ByteOrderAuto writes each
// entry in the byte order it was read in (little-endian for entries that
// have none).
func NewWriter(w io.Writer, order ByteOrder) *Writer {
	return &Writer{w: w, order: order}
}

// Offset returns the number of bytes written.
func (w *Writer) Offset() int64 { return w.n }

// Write encodes one entry.
func (w *Writer) Write(e *Entry) error {
	order := w.order
	if order == ByteOrderAuto {
		order = e.ByteOrder
	}
	b, err := AppendBinary(w.buf[:0], e, order)
	if err != nil {
		return err
	}
	w.buf = b
	n, err := w.w.Write(b)
	w.n += int64(n)
	if err != nil {
		return fmt.Errorf("write entry %d: %w", e.Index, err)
	}
	return nil
}

// AppendBinary appends the binary encoding of e to b.
func AppendBinary(b []byte, e *Entry, order ByteOrder) ([]byte, error) {
	bo := appendOrderOf(order)
	if len(e.TemplateName) == 0 || len(e.TemplateName) > MaxTemplateNameLen {
		return b, fmt.Errorf("entry %d: template name length %d is outside 1..%d", e.Index, len(e.TemplateName), MaxTemplateNameLen)
	}

	b = bo.AppendUint32(b, e.PCR)
	b = append(b, e.TemplateDigest...)
	b = bo.AppendUint32(b, uint32(len(e.TemplateName)))
	b = append(b, e.TemplateName...)
	if e.IsLegacy() {
		if len(e.TemplateData) < legacyDigestSize || len(e.TemplateData)-legacyDigestSize > MaxLegacyNameLen {
			return b, fmt.Errorf("entry %d: legacy ima template data of %d bytes is not a 20-byte digest and a name of at most %d bytes", e.Index, len(e.TemplateData), MaxLegacyNameLen)
		}
		b = append(b, e.TemplateData[:legacyDigestSize]...)
		b = bo.AppendUint32(b, uint32(len(e.TemplateData)-legacyDigestSize))
		return append(b, e.TemplateData[legacyDigestSize:]...), nil
	}
	if len(e.TemplateData) > MaxTemplateDataLen {
		return b, fmt.Errorf("entry %d: template data of %d bytes is more than the limit of %d", e.Index, len(e.TemplateData), MaxTemplateDataLen)
	}
	b = bo.AppendUint32(b, uint32(len(e.TemplateData)))
	return append(b, e.TemplateData...), nil
}

// AppendASCII appends the entry as a line of the kernel's ASCII list,
// newline included. Names are printed raw, as the kernel does, so a name
// with a newline breaks the line; use the binary list where that matters.
// Template data that does not parse is printed as one hex field.
func AppendASCII(b []byte, e *Entry) []byte {
	return appendASCII(b, e, false)
}

// AppendASCIIEscaped is AppendASCII with control bytes and invalid UTF-8 in
// names printed as \xNN, so that every entry stays on one line. Lines with
// ordinary names are identical to the kernel's.
func AppendASCIIEscaped(b []byte, e *Entry) []byte {
	return appendASCII(b, e, true)
}

func appendASCII(b []byte, e *Entry, escape bool) []byte {
	if e.PCR < 10 {
		b = append(b, ' ')
	}
	b = strconv.AppendUint(b, uint64(e.PCR), 10)
	b = append(b, ' ')
	b = hex.AppendEncode(b, e.TemplateDigest)
	b = append(b, ' ')
	b = append(b, e.TemplateName...)

	t, err := e.ParseTemplate()
	if err != nil || t.Unknown {
		b = append(b, ' ')
		b = hex.AppendEncode(b, e.TemplateData)
		return append(b, '\n')
	}
	for i := range t.Fields {
		b = append(b, ' ')
		if escape && t.Fields[i].Name != nil {
			b = AppendEscapedName(b, t.Fields[i].Name)
			continue
		}
		b = appendFieldASCII(b, &t.Fields[i], e.IsLegacy())
	}
	return append(b, '\n')
}

// AppendEscapedName appends a name with control bytes, DEL and bytes that
// are not valid UTF-8 written as \xNN. Other bytes, backslash included,
// are copied unchanged.
func AppendEscapedName(b, name []byte) []byte {
	for len(name) > 0 {
		r, size := utf8.DecodeRune(name)
		switch {
		case r == utf8.RuneError && size <= 1, r < 0x20, r == 0x7f:
			b = append(b, '\\', 'x', hexDigits[name[0]>>4], hexDigits[name[0]&0xf])
			size = 1
		default:
			b = append(b, name[:size]...)
		}
		name = name[size:]
	}
	return b
}

const hexDigits = "0123456789abcdef"
