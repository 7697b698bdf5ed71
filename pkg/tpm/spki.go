package tpm

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
)

// This file encodes and decodes the DER SubjectPublicKeyInfo (RFC 5280,
// section 4.1) of the key types an AK can have. It replaces crypto/x509's
// MarshalPKIXPublicKey and ParsePKIXPublicKey, which added about 250 KB of
// certificate code to the stripped static binary (measured with Go 1.26).

// ErrUnsupportedKey reports a public key whose type or curve the
// SubjectPublicKeyInfo code does not handle.
var ErrUnsupportedKey = errors.New("unsupported public key")

// ErrMalformedSPKI reports DER that is not a valid SubjectPublicKeyInfo.
var ErrMalformedSPKI = errors.New("malformed SubjectPublicKeyInfo")

// Object identifiers from RFC 3279 (rsaEncryption, id-ecPublicKey) and
// RFC 5480 (the named curves).
var (
	oidRSAEncryption = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}
	oidECPublicKey   = asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}
	oidP256          = asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}
	oidP384          = asn1.ObjectIdentifier{1, 3, 132, 0, 34}
	oidP521          = asn1.ObjectIdentifier{1, 3, 132, 0, 35}
)

type subjectPublicKeyInfo struct {
	Algorithm algorithmIdentifier
	PublicKey asn1.BitString
}

type algorithmIdentifier struct {
	Algorithm  asn1.ObjectIdentifier
	Parameters asn1.RawValue `asn1:"optional"`
}

type rsaPublicKey struct {
	N *big.Int
	E int
}

// curveOIDs lists the ECDSA curves an SPKI may name, in both directions.
var curveOIDs = []struct {
	curve elliptic.Curve
	oid   asn1.ObjectIdentifier
}{
	{elliptic.P256(), oidP256},
	{elliptic.P384(), oidP384},
	{elliptic.P521(), oidP521},
}

// MarshalPKIXPublicKey encodes an RSA or ECDSA (P-256, P-384, P-521) public
// key as a DER SubjectPublicKeyInfo, the body of a PEM "PUBLIC KEY" block.
// The output is byte for byte what crypto/x509.MarshalPKIXPublicKey writes.
func MarshalPKIXPublicKey(key crypto.PublicKey) ([]byte, error) {
	var spki subjectPublicKeyInfo
	switch k := key.(type) {
	case *rsa.PublicKey:
		if k.N == nil || k.N.Sign() <= 0 || k.E <= 0 {
			return nil, fmt.Errorf("%w: RSA key with a modulus or exponent that is not positive", ErrUnsupportedKey)
		}
		body, err := asn1.Marshal(rsaPublicKey{N: k.N, E: k.E})
		if err != nil {
			return nil, fmt.Errorf("encode RSA public key: %w", err)
		}
		spki.Algorithm = algorithmIdentifier{Algorithm: oidRSAEncryption, Parameters: asn1.NullRawValue}
		spki.PublicKey = asn1.BitString{Bytes: body, BitLength: 8 * len(body)}

	case *ecdsa.PublicKey:
		oid, err := curveOID(k.Curve)
		if err != nil {
			return nil, err
		}
		point, err := k.Bytes()
		if err != nil {
			return nil, fmt.Errorf("%w: ECDSA key on %s: %v", ErrUnsupportedKey, k.Curve.Params().Name, err)
		}
		params, err := asn1.Marshal(oid)
		if err != nil {
			return nil, fmt.Errorf("encode curve identifier: %w", err)
		}
		spki.Algorithm = algorithmIdentifier{Algorithm: oidECPublicKey, Parameters: asn1.RawValue{FullBytes: params}}
		spki.PublicKey = asn1.BitString{Bytes: point, BitLength: 8 * len(point)}

	default:
		return nil, fmt.Errorf("%w: %T: AK public keys are RSA or ECDSA (P-256, P-384, P-521)", ErrUnsupportedKey, key)
	}
	return asn1.Marshal(spki)
}

// ParsePKIXPublicKey decodes a DER SubjectPublicKeyInfo holding an RSA or
// ECDSA (P-256, P-384, P-521) public key. It returns *rsa.PublicKey or
// *ecdsa.PublicKey, as crypto/x509.ParsePKIXPublicKey does for these types.
func ParsePKIXPublicKey(der []byte) (crypto.PublicKey, error) {
	var spki subjectPublicKeyInfo
	rest, err := asn1.Unmarshal(der, &spki)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedSPKI, err)
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the SubjectPublicKeyInfo", ErrMalformedSPKI, len(rest))
	}
	if spki.PublicKey.BitLength%8 != 0 {
		return nil, fmt.Errorf("%w: subjectPublicKey has %d bits, not whole bytes", ErrMalformedSPKI, spki.PublicKey.BitLength)
	}

	alg := spki.Algorithm
	switch {
	case alg.Algorithm.Equal(oidRSAEncryption):
		return parseRSAPublicKey(alg.Parameters, spki.PublicKey.Bytes)
	case alg.Algorithm.Equal(oidECPublicKey):
		return parseECDSAPublicKey(alg.Parameters, spki.PublicKey.Bytes)
	}
	return nil, fmt.Errorf("%w: algorithm %v: AK public keys are RSA (%v) or ECDSA (%v)", ErrUnsupportedKey, alg.Algorithm, oidRSAEncryption, oidECPublicKey)
}

func parseRSAPublicKey(params asn1.RawValue, body []byte) (*rsa.PublicKey, error) {
	// RFC 3279 section 2.3.1 requires NULL parameters for rsaEncryption.
	if params.Tag != asn1.TagNull || params.Class != asn1.ClassUniversal || len(params.Bytes) != 0 {
		return nil, fmt.Errorf("%w: rsaEncryption parameters are not NULL", ErrMalformedSPKI)
	}
	var k rsaPublicKey
	rest, err := asn1.Unmarshal(body, &k)
	if err != nil {
		return nil, fmt.Errorf("%w: RSA public key: %v", ErrMalformedSPKI, err)
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the RSA public key", ErrMalformedSPKI, len(rest))
	}
	if k.N.Sign() <= 0 {
		return nil, fmt.Errorf("%w: RSA modulus is not positive", ErrMalformedSPKI)
	}
	if k.E <= 0 {
		return nil, fmt.Errorf("%w: RSA public exponent %d is not positive", ErrMalformedSPKI, k.E)
	}
	return &rsa.PublicKey{N: k.N, E: k.E}, nil
}

func parseECDSAPublicKey(params asn1.RawValue, point []byte) (*ecdsa.PublicKey, error) {
	var oid asn1.ObjectIdentifier
	rest, err := asn1.Unmarshal(params.FullBytes, &oid)
	if err != nil {
		return nil, fmt.Errorf("%w: id-ecPublicKey parameters are not a named curve: %v", ErrMalformedSPKI, err)
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the named curve", ErrMalformedSPKI, len(rest))
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

func curveOID(curve elliptic.Curve) (asn1.ObjectIdentifier, error) {
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

func oidCurve(oid asn1.ObjectIdentifier) (elliptic.Curve, error) {
	for _, c := range curveOIDs {
		if c.oid.Equal(oid) {
			return c.curve, nil
		}
	}
	return nil, fmt.Errorf("%w: ECDSA named curve %v: use P-256 (%v), P-384 (%v) or P-521 (%v)", ErrUnsupportedKey, oid, oidP256, oidP384, oidP521)
}
