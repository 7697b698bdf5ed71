package tpm

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"strings"
)

// This file encodes and decodes the DER SubjectPublicKeyInfo (RFC 5280,
// section 4.1) of the key types an AK can have. It replaces crypto/x509's
// MarshalPKIXPublicKey and ParsePKIXPublicKey, which added about 250 KB of
// certificate code to the stripped static binary. It writes DER by hand
// because encoding/asn1's reflection-based Marshal and Unmarshal added
// another 135 KB (both measured with Go 1.26 on linux/amd64).

// ErrUnsupportedKey reports a public key whose type or curve the
// SubjectPublicKeyInfo code does not handle.
var ErrUnsupportedKey = errors.New("unsupported public key")

// ErrMalformedSPKI reports bytes that are not a DER SubjectPublicKeyInfo.
var ErrMalformedSPKI = errors.New("malformed SubjectPublicKeyInfo")

// DER tags (ITU-T X.690) of the types a SubjectPublicKeyInfo uses.
const (
	tagInteger   = 0x02
	tagBitString = 0x03
	tagNull      = 0x05
	tagOID       = 0x06
	tagSequence  = 0x30 // constructed SEQUENCE
)

// Contents octets of the object identifiers from RFC 3279 (rsaEncryption,
// id-ecPublicKey) and RFC 5480 (the named curves). TestSPKIObjectIdentifiers
// checks them against encoding/asn1.
var (
	oidRSAEncryption = []byte{0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01} // 1.2.840.113549.1.1.1
	oidECPublicKey   = []byte{0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01}             // 1.2.840.10045.2.1
	oidP256          = []byte{0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}       // 1.2.840.10045.3.1.7
	oidP384          = []byte{0x2b, 0x81, 0x04, 0x00, 0x22}                         // 1.3.132.0.34
	oidP521          = []byte{0x2b, 0x81, 0x04, 0x00, 0x23}                         // 1.3.132.0.35
)

// curveOIDs lists the ECDSA curves an SPKI may name, in both directions.
var curveOIDs = []struct {
	curve elliptic.Curve
	oid   []byte
}{
	{elliptic.P256(), oidP256},
	{elliptic.P384(), oidP384},
	{elliptic.P521(), oidP521},
}

// MarshalPKIXPublicKey encodes an RSA or ECDSA (P-256, P-384, P-521) public
// key as a DER SubjectPublicKeyInfo, the body of a PEM "PUBLIC KEY" block.
// The output is byte for byte what crypto/x509.MarshalPKIXPublicKey writes.
func MarshalPKIXPublicKey(key crypto.PublicKey) ([]byte, error) {
	var algorithm, subjectPublicKey []byte
	switch k := key.(type) {
	case *rsa.PublicKey:
		if k.N == nil || k.N.Sign() <= 0 || k.E <= 0 {
			return nil, fmt.Errorf("%w: RSA key with a modulus or exponent that is not positive", ErrUnsupportedKey)
		}
		algorithm = appendTLV(appendTLV(nil, tagOID, oidRSAEncryption), tagNull, nil)
		body := appendInteger(appendInteger(nil, k.N), big.NewInt(int64(k.E)))
		subjectPublicKey = appendTLV(nil, tagSequence, body)

	case *ecdsa.PublicKey:
		oid, err := curveOID(k.Curve)
		if err != nil {
			return nil, err
		}
		point, err := k.Bytes()
		if err != nil {
			return nil, fmt.Errorf("%w: ECDSA key on %s: %v", ErrUnsupportedKey, k.Curve.Params().Name, err)
		}
		algorithm = appendTLV(appendTLV(nil, tagOID, oidECPublicKey), tagOID, oid)
		subjectPublicKey = point

	default:
		return nil, fmt.Errorf("%w: %T: AK public keys are RSA or ECDSA (P-256, P-384, P-521)", ErrUnsupportedKey, key)
	}

	// The BIT STRING's first contents octet counts the unused bits in its
	// last octet, zero for a whole number of bytes.
	bitString := append([]byte{0}, subjectPublicKey...)
	spki := appendTLV(nil, tagSequence, algorithm)
	spki = appendTLV(spki, tagBitString, bitString)
	return appendTLV(nil, tagSequence, spki), nil
}

// ParsePKIXPublicKey decodes a DER SubjectPublicKeyInfo holding an RSA or
// ECDSA (P-256, P-384, P-521) public key. It returns *rsa.PublicKey or
// *ecdsa.PublicKey, as crypto/x509.ParsePKIXPublicKey does for these types.
func ParsePKIXPublicKey(der []byte) (crypto.PublicKey, error) {
	spki, err := readOnly(der, tagSequence, "SubjectPublicKeyInfo")
	if err != nil {
		return nil, err
	}
	algorithm, rest, err := readTLV(spki, tagSequence, "AlgorithmIdentifier")
	if err != nil {
		return nil, err
	}
	bitString, err := readOnly(rest, tagBitString, "subjectPublicKey")
	if err != nil {
		return nil, err
	}
	if len(bitString) == 0 || bitString[0] != 0 {
		return nil, fmt.Errorf("%w: subjectPublicKey is not a whole number of bytes", ErrMalformedSPKI)
	}
	subjectPublicKey := bitString[1:]

	oid, params, err := readTLV(algorithm, tagOID, "algorithm")
	if err != nil {
		return nil, err
	}
	switch {
	case bytes.Equal(oid, oidRSAEncryption):
		return parseRSAPublicKey(params, subjectPublicKey)
	case bytes.Equal(oid, oidECPublicKey):
		return parseECDSAPublicKey(params, subjectPublicKey)
	}
	return nil, fmt.Errorf("%w: algorithm %s: AK public keys are RSA (%s) or ECDSA (%s)", ErrUnsupportedKey, oidString(oid), oidString(oidRSAEncryption), oidString(oidECPublicKey))
}

func parseRSAPublicKey(params, subjectPublicKey []byte) (*rsa.PublicKey, error) {
	// RFC 3279 section 2.3.1 requires NULL parameters for rsaEncryption.
	if null, err := readOnly(params, tagNull, "rsaEncryption parameters"); err != nil || len(null) != 0 {
		return nil, fmt.Errorf("%w: rsaEncryption parameters are not NULL", ErrMalformedSPKI)
	}
	body, err := readOnly(subjectPublicKey, tagSequence, "RSAPublicKey")
	if err != nil {
		return nil, err
	}
	n, rest, err := readPositiveInteger(body, "RSA modulus")
	if err != nil {
		return nil, err
	}
	e, rest, err := readPositiveInteger(rest, "RSA public exponent")
	if err != nil {
		return nil, err
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the RSA public exponent", ErrMalformedSPKI, len(rest))
	}
	if !e.IsInt64() || e.Int64() != int64(int(e.Int64())) {
		return nil, fmt.Errorf("%w: RSA public exponent %v is too large", ErrMalformedSPKI, e)
	}
	return &rsa.PublicKey{N: n, E: int(e.Int64())}, nil
}

func parseECDSAPublicKey(params, point []byte) (*ecdsa.PublicKey, error) {
	oid, err := readOnly(params, tagOID, "id-ecPublicKey parameters (a named curve)")
	if err != nil {
		return nil, err
	}
	curve, err := oidCurve(oid)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.ParseUncompressedPublicKey(curve, point)
	if err != nil {
		return nil, fmt.Errorf("%w: ECDSA point on %s: %v", ErrMalformedSPKI, curve.Params().Name, err)
	}
	return key, nil
}

func curveOID(curve elliptic.Curve) ([]byte, error) {
	for _, c := range curveOIDs {
		if c.curve == curve {
			return c.oid, nil
		}
	}
	name := "an unnamed curve"
	if curve != nil && curve.Params() != nil {
		name = curve.Params().Name
	}
	return nil, fmt.Errorf("%w: ECDSA key on %s: use P-256, P-384 or P-521", ErrUnsupportedKey, name)
}

func oidCurve(oid []byte) (elliptic.Curve, error) {
	for _, c := range curveOIDs {
		if bytes.Equal(c.oid, oid) {
			return c.curve, nil
		}
	}
	return nil, fmt.Errorf("%w: ECDSA named curve %s: use P-256 (%s), P-384 (%s) or P-521 (%s)", ErrUnsupportedKey, oidString(oid), oidString(oidP256), oidString(oidP384), oidString(oidP521))
}

// appendTLV appends a DER element with the given tag and contents.
func appendTLV(dst []byte, tag byte, contents []byte) []byte {
	dst = append(dst, tag)
	n := len(contents)
	switch {
	case n < 0x80:
		dst = append(dst, byte(n))
	case n <= 0xff:
		dst = append(dst, 0x81, byte(n))
	case n <= 0xffff:
		dst = append(dst, 0x82, byte(n>>8), byte(n))
	default:
		dst = append(dst, 0x83, byte(n>>16), byte(n>>8), byte(n))
	}
	return append(dst, contents...)
}

// appendInteger appends a non-negative INTEGER in the fewest octets, with a
// leading zero octet where the top bit would otherwise read as a sign.
func appendInteger(dst []byte, v *big.Int) []byte {
	b := v.Bytes()
	if len(b) == 0 || b[0]&0x80 != 0 {
		b = append([]byte{0}, b...)
	}
	return appendTLV(dst, tagInteger, b)
}

// readTLV reads one DER element with the given tag from the start of data
// and returns its contents and the bytes after it. It accepts only definite
// lengths in their shortest form, as DER requires.
func readTLV(data []byte, tag byte, what string) (contents, rest []byte, err error) {
	if len(data) < 2 {
		return nil, nil, fmt.Errorf("%w: %s missing or truncated", ErrMalformedSPKI, what)
	}
	if data[0] != tag {
		return nil, nil, fmt.Errorf("%w: %s has tag %#02x, want %#02x", ErrMalformedSPKI, what, data[0], tag)
	}
	n, header := int(data[1]), 2
	if n >= 0x80 {
		lengthOctets := n & 0x7f
		// Lengths of up to 2^24-1 bytes (three octets) cover any key.
		if lengthOctets == 0 || lengthOctets > 3 || len(data) < 2+lengthOctets {
			return nil, nil, fmt.Errorf("%w: %s has an invalid length", ErrMalformedSPKI, what)
		}
		n = 0
		for _, b := range data[2 : 2+lengthOctets] {
			n = n<<8 | int(b)
		}
		if data[2] == 0 || n < 0x80 {
			return nil, nil, fmt.Errorf("%w: %s length is not in its shortest form", ErrMalformedSPKI, what)
		}
		header += lengthOctets
	}
	if len(data)-header < n {
		return nil, nil, fmt.Errorf("%w: %s is truncated: %d of %d bytes", ErrMalformedSPKI, what, len(data)-header, n)
	}
	return data[header : header+n], data[header+n:], nil
}

// readOnly reads a DER element that must fill data completely.
func readOnly(data []byte, tag byte, what string) ([]byte, error) {
	contents, rest, err := readTLV(data, tag, what)
	if err != nil {
		return nil, err
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after %s", ErrMalformedSPKI, len(rest), what)
	}
	return contents, nil
}

// readPositiveInteger reads a DER INTEGER that must be greater than zero.
func readPositiveInteger(data []byte, what string) (*big.Int, []byte, error) {
	contents, rest, err := readTLV(data, tagInteger, what)
	if err != nil {
		return nil, nil, err
	}
	if len(contents) == 0 {
		return nil, nil, fmt.Errorf("%w: %s is empty", ErrMalformedSPKI, what)
	}
	if len(contents) > 1 && (contents[0] == 0 && contents[1]&0x80 == 0 || contents[0] == 0xff && contents[1]&0x80 != 0) {
		return nil, nil, fmt.Errorf("%w: %s is not in its shortest form", ErrMalformedSPKI, what)
	}
	v := new(big.Int).SetBytes(contents)
	if contents[0]&0x80 != 0 || v.Sign() == 0 {
		return nil, nil, fmt.Errorf("%w: %s is not positive", ErrMalformedSPKI, what)
	}
	return v, rest, nil
}

// oidString formats the contents octets of an object identifier in dotted
// decimal, or as hex when they do not decode.
func oidString(oid []byte) string {
	var arcs []uint64
	var v uint64
	for i, b := range oid {
		if v > 1<<56 {
			return fmt.Sprintf("%x", oid)
		}
		v = v<<7 | uint64(b&0x7f)
		if b&0x80 != 0 {
			if i == len(oid)-1 {
				return fmt.Sprintf("%x", oid)
			}
			continue
		}
		if len(arcs) == 0 {
			// The first subidentifier packs the first two arcs as 40*x+y.
			first := min(v/40, 2)
			arcs = append(arcs, first, v-40*first)
		} else {
			arcs = append(arcs, v)
		}
		v = 0
	}
	if len(arcs) == 0 {
		return fmt.Sprintf("%x", oid)
	}
	parts := make([]string, len(arcs))
	for i, a := range arcs {
		parts[i] = strconv.FormatUint(a, 10)
	}
	return strings.Join(parts, ".")
}
