package imalog

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/imashard/imashard/pkg/pcr"
)

// templateFields maps the kernel's built-in template names to their field
// ids (security/integrity/ima/ima_template.c, Linux 6.12).
var templateFields = map[string][]string{
	"ima":        {"d", "n"},
	"ima-ng":     {"d-ng", "n-ng"},
	"ima-ngv2":   {"d-ngv2", "n-ng"},
	"ima-sig":    {"d-ng", "n-ng", "sig"},
	"ima-sigv2":  {"d-ngv2", "n-ng", "sig"},
	"ima-buf":    {"d-ng", "n-ng", "buf"},
	"ima-modsig": {"d-ng", "n-ng", "sig", "d-modsig", "modsig"},
	"evm-sig":    {"d-ng", "n-ng", "evmsig", "xattrnames", "xattrlengths", "xattrvalues", "iuid", "igid", "imode"},
}

// knownFields lists the kernel's template field ids.
var knownFields = map[string]bool{
	"d": true, "n": true, "d-ng": true, "d-ngv2": true, "n-ng": true, "sig": true,
	"buf": true, "d-modsig": true, "modsig": true, "evmsig": true, "xattrnames": true,
	"xattrlengths": true, "xattrvalues": true, "iuid": true, "igid": true, "imode": true,
}

// ErrUnknownTemplate: the template name is neither a built-in template nor a
// custom field list. Such entries are still framed and hashed.
var ErrUnknownTemplate = errors.New("unknown template")

// TemplateFields returns the field ids of a template: a built-in template's
// fields, or the fields of a custom template, which the kernel names by its
// format string ("d-ng|n-ng|sig"). It wraps ErrUnknownTemplate otherwise.
func TemplateFields(name string) ([]string, error) {
	if ids, ok := templateFields[name]; ok {
		return ids, nil
	}
	ids := strings.Split(name, "|")
	for _, id := range ids {
		if !knownFields[id] {
			return nil, fmt.Errorf("%w %q: field %q is not a kernel template field", ErrUnknownTemplate, name, id)
		}
	}
	return ids, nil
}

// Digest is a decoded d, d-ng, d-ngv2 or d-modsig field.
type Digest struct {
	Type   string  // "ima" or "verity" for d-ngv2, empty otherwise
	Algo   string  // the kernel's algorithm name, "" for the legacy d field
	Alg    pcr.Alg // zero when pcr has no TPM algorithm for Algo
	Digest []byte
}

// String renders the digest as the ASCII list does: [type:]algo:hex.
func (d *Digest) String() string {
	var b strings.Builder
	if d.Type != "" {
		b.WriteString(d.Type + ":")
	}
	if d.Algo != "" {
		b.WriteString(d.Algo + ":")
	}
	b.WriteString(hex.EncodeToString(d.Digest))
	return b.String()
}

// Signature is a decoded sig field: the IMA signature header (struct
// signature_v2_hdr) and the signature.
type Signature struct {
	Type      byte // 3 = EVM_IMA_XATTR_DIGSIG
	Version   byte
	HashAlgo  byte   // the kernel's enum hash_algo value
	KeyID     uint32 // big-endian in the header
	SigSize   uint16 // big-endian in the header
	Signature []byte
}

const signatureHeaderSize = 9

// Field is one template field: its id, its bytes as in the template data and
// its decoded value, where the id has one.
type Field struct {
	ID   string
	Data []byte

	Digest    *Digest    // d, d-ng, d-ngv2, d-modsig (nil when empty)
	Name      []byte     // n, n-ng, xattrnames: without the trailing NUL
	Signature *Signature // sig, evmsig: nil when empty or when the header is malformed
	Uint      uint64     // iuid, igid, imode
	Lengths   []uint32   // xattrlengths
	// Problem describes a field whose bytes break the kernel's format. The
	// template hash covers the bytes regardless, so this is not an error.
	Problem string
}

// Template is an entry's decoded template data.
type Template struct {
	Fields []Field
	// Unknown is set when the template name is not known: Fields then holds
	// the length-prefixed fields with empty ids.
	Unknown bool
	// TrailingBytes counts bytes after the last field, which the kernel
	// hashed but no field describes.
	TrailingBytes int
}

// Field returns the first field with the id, or nil.
func (t *Template) Field(id string) *Field {
	for i := range t.Fields {
		if t.Fields[i].ID == id {
			return &t.Fields[i]
		}
	}
	return nil
}

// ParseTemplate decodes the entry's template data into fields. Byte-level
// framing errors are returned; field content problems are recorded in
// Field.Problem so that callers can still replay and show the entry.
func (e *Entry) ParseTemplate() (*Template, error) {
	order := byteOrderOf(e.ByteOrder)
	if e.IsLegacy() {
		if len(e.TemplateData) < legacyDigestSize {
			return nil, fmt.Errorf("%w: legacy ima template data is %d bytes, shorter than its 20-byte digest", ErrMalformed, len(e.TemplateData))
		}
		d := e.TemplateData[:legacyDigestSize]
		n := e.TemplateData[legacyDigestSize:]
		return &Template{Fields: []Field{
			{ID: "d", Data: d, Digest: &Digest{Alg: pcr.SHA1, Digest: d}},
			{ID: "n", Data: n, Name: n},
		}}, nil
	}

	ids, idErr := TemplateFields(e.TemplateName)
	t := &Template{Unknown: idErr != nil}
	data := e.TemplateData
	for i := 0; len(data) > 0; i++ {
		if !t.Unknown && i == len(ids) {
			t.TrailingBytes = len(data)
			break
		}
		if len(data) < 4 {
			return t, fmt.Errorf("%w: %d bytes left in the template data where field %d needs a 4-byte length", ErrMalformed, len(data), i)
		}
		n := order.Uint32(data)
		if uint64(n) > uint64(len(data)-4) {
			return t, fmt.Errorf("%w: template field %d declares %d bytes but only %d remain", ErrMalformed, i, n, len(data)-4)
		}
		f := Field{Data: data[4 : 4+n : 4+n]}
		if !t.Unknown {
			f.ID = ids[i]
			decodeField(&f, order)
		}
		t.Fields = append(t.Fields, f)
		data = data[4+n:]
	}
	if !t.Unknown && len(t.Fields) < len(ids) {
		return t, fmt.Errorf("%w: template %s has %d fields but the template data contains %d", ErrMalformed, e.TemplateName, len(ids), len(t.Fields))
	}
	if t.TrailingBytes > 0 {
		return t, fmt.Errorf("%w: %d trailing bytes in template data after the last field", ErrMalformed, t.TrailingBytes)
	}
	return t, nil
}

func byteOrderOf(o ByteOrder) binary.ByteOrder {
	if o == BigEndian {
		return binary.BigEndian
	}
	return binary.LittleEndian
}

func decodeField(f *Field, order binary.ByteOrder) {
	switch f.ID {
	case "d":
		f.Digest = &Digest{Digest: f.Data}
		if len(f.Data) == legacyDigestSize {
			f.Digest.Alg = pcr.SHA1
		}
	case "d-ng", "d-ngv2", "d-modsig":
		if len(f.Data) == 0 {
			return
		}
		d, problem := decodeDigest(f.Data, f.ID == "d-ngv2")
		f.Digest, f.Problem = d, problem
	case "n", "n-ng", "xattrnames":
		name, ok := bytes.CutSuffix(f.Data, []byte{0})
		if !ok && len(f.Data) > 0 {
			f.Problem = "name does not end with a NUL byte"
		}
		f.Name = name
	case "sig", "evmsig":
		if len(f.Data) == 0 {
			return
		}
		f.Signature, f.Problem = decodeSignature(f.Data)
	case "iuid", "igid", "imode":
		switch len(f.Data) {
		case 1:
			f.Uint = uint64(f.Data[0])
		case 2:
			f.Uint = uint64(order.Uint16(f.Data))
		case 4:
			f.Uint = uint64(order.Uint32(f.Data))
		case 8:
			f.Uint = order.Uint64(f.Data)
		default:
			f.Problem = fmt.Sprintf("integer field of %d bytes, expected 1, 2, 4 or 8", len(f.Data))
		}
	case "xattrlengths":
		if len(f.Data)%4 != 0 {
			f.Problem = fmt.Sprintf("xattr lengths of %d bytes, not a multiple of 4", len(f.Data))
			return
		}
		for i := 0; i < len(f.Data); i += 4 {
			f.Lengths = append(f.Lengths, order.Uint32(f.Data[i:]))
		}
	}
}

// decodeDigest splits "[type:]algo:\0digest" at the last ':' before the NUL.
// The kernel writes the prefix whenever the algorithm is in its hash_algo_name table.
func decodeDigest(data []byte, typed bool) (*Digest, string) {
	nul := bytes.IndexByte(data, 0)
	if nul < 0 {
		return &Digest{Digest: data}, "digest has no algorithm prefix"
	}
	prefix := string(data[:nul])
	digest := data[nul+1:]
	colon := strings.LastIndexByte(prefix, ':')
	if colon < 0 || colon != len(prefix)-1 {
		return &Digest{Digest: digest}, fmt.Sprintf("digest prefix %q does not end with ':'", prefix)
	}
	d := &Digest{Algo: prefix[:colon], Digest: digest}
	if typed {
		typ, algo, ok := strings.Cut(d.Algo, ":")
		if !ok {
			return d, fmt.Sprintf("d-ngv2 prefix %q has no digest type", prefix)
		}
		d.Type, d.Algo = typ, algo
	}

	alg, err := pcr.ParseAlg(d.Algo)
	if err != nil || strings.HasPrefix(d.Algo, "tpm_alg_") || strings.HasPrefix(d.Algo, "0x") {
		return d, fmt.Sprintf("digest algorithm %q is unknown or unsupported", d.Algo)
	}
	d.Alg = alg
	if alg.Size() != len(digest) {
		return d, fmt.Sprintf("%s digest is %d bytes, expected %d", d.Algo, len(digest), alg.Size())
	}
	return d, ""
}

func decodeSignature(data []byte) (*Signature, string) {
	if len(data) < signatureHeaderSize {
		return nil, fmt.Sprintf("signature of %d bytes is shorter than its 9-byte header", len(data))
	}
	s := &Signature{
		Type:      data[0],
		Version:   data[1],
		HashAlgo:  data[2],
		KeyID:     binary.BigEndian.Uint32(data[3:7]),
		SigSize:   binary.BigEndian.Uint16(data[7:9]),
		Signature: data[signatureHeaderSize:],
	}
	if int(s.SigSize) != len(s.Signature) {
		return s, fmt.Sprintf("signature header declares %d bytes but %d follow", s.SigSize, len(s.Signature))
	}
	return s, ""
}

// appendFieldASCII renders one field as the kernel's ASCII list does.
func appendFieldASCII(b []byte, f *Field, legacy bool) []byte {
	switch f.ID {
	case "d":
		return hex.AppendEncode(b, f.Data)
	case "n":
		if legacy {
			return append(b, f.Data...)
		}
		return appendCString(b, f.Data)
	case "n-ng", "xattrnames":
		return appendCString(b, f.Data)
	case "d-ng", "d-ngv2", "d-modsig":
		return appendDigestASCII(b, f.Data)
	case "iuid", "igid", "imode":
		if f.Problem != "" {
			return hex.AppendEncode(b, f.Data)
		}
		return strconv.AppendUint(b, f.Uint, 10)
	}
	// sig, buf, modsig, evmsig, xattrlengths, xattrvalues and unknown
	// fields print as hex.
	return hex.AppendEncode(b, f.Data)
}

// appendCString prints up to the first NUL, as the kernel's "%s" does.
func appendCString(b, data []byte) []byte {
	if i := bytes.IndexByte(data, 0); i >= 0 {
		data = data[:i]
	}
	return append(b, data...)
}

// appendDigestASCII prints the prefix up to its last ':', then the bytes
// after the ':' and NUL in hex.
func appendDigestASCII(b, data []byte) []byte {
	if len(data) == 0 {
		return b
	}
	nul := bytes.IndexByte(data, 0)
	if nul < 0 {
		return hex.AppendEncode(b, data)
	}
	b = append(b, data[:nul]...)
	return hex.AppendEncode(b, data[nul+1:])
}

func appendOrderOf(o ByteOrder) binary.AppendByteOrder {
	if o == BigEndian {
		return binary.BigEndian
	}
	return binary.LittleEndian
}
