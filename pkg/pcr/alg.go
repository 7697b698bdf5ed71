// Package pcr names TPM hash algorithms and holds PCR values per bank, so the
// log, replay, TPM and shard packages exchange PCR state in one type.
package pcr

import (
	"crypto"
	_ "crypto/sha1" // registers SHA-1 for crypto.Hash.New
	_ "crypto/sha256"
	_ "crypto/sha512"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"strings"
)

// Alg is a TPM_ALG_ID that names a hash algorithm (TPM 2.0 Part 2, table
// "Definition of TPM_ALG_ID Constants"). The same value names a PCR bank.
type Alg uint16

// The hash algorithms that IMA and PCR banks use in practice.
const (
	SHA1    Alg = 0x0004
	SHA256  Alg = 0x000B
	SHA384  Alg = 0x000C
	SHA512  Alg = 0x000D
	SM3_256 Alg = 0x0012
)

// ErrUnsupportedAlg reports a hash algorithm that imashard cannot compute.
// The algorithm can still be named and its digests carried byte-exact.
var ErrUnsupportedAlg = errors.New("unsupported hash algorithm")

type algInfo struct {
	name   string
	size   int
	crypto crypto.Hash // zero when Go's standard library lacks the algorithm
}

var algs = map[Alg]algInfo{
	SHA1:    {"sha1", 20, crypto.SHA1},
	SHA256:  {"sha256", 32, crypto.SHA256},
	SHA384:  {"sha384", 48, crypto.SHA384},
	SHA512:  {"sha512", 64, crypto.SHA512},
	SM3_256: {"sm3_256", 32, 0},
}

// KnownAlgs lists the algorithms this package can name, in TPM_ALG_ID order.
func KnownAlgs() []Alg {
	return []Alg{SHA1, SHA256, SHA384, SHA512, SM3_256}
}

// String returns the kernel's and tpm2-tools' name for the algorithm (sha1,
// sha256, ...), or tpm_alg_0xNNNN for an algorithm this package does not know.
func (a Alg) String() string {
	if info, ok := algs[a]; ok {
		return info.name
	}
	return fmt.Sprintf("tpm_alg_%#04x", uint16(a))
}

// Size returns the digest size in bytes, or 0 for an unknown algorithm.
func (a Alg) Size() int {
	return algs[a].size
}

// Known reports whether the algorithm's name and digest size are known.
func (a Alg) Known() bool {
	_, ok := algs[a]
	return ok
}

// New returns a new hash.Hash for the algorithm. It fails with
// ErrUnsupportedAlg for SM3 and for unknown algorithms.
func (a Alg) New() (hash.Hash, error) {
	info, ok := algs[a]
	if !ok || info.crypto == 0 {
		return nil, fmt.Errorf("%w: %s", ErrUnsupportedAlg, a)
	}
	return info.crypto.New(), nil
}

// CryptoHash returns the Go crypto.Hash for the algorithm, or ErrUnsupportedAlg.
func (a Alg) CryptoHash() (crypto.Hash, error) {
	info, ok := algs[a]
	if !ok || info.crypto == 0 {
		return 0, fmt.Errorf("%w: %s", ErrUnsupportedAlg, a)
	}
	return info.crypto, nil
}

// ParseAlg accepts the names in use across the kernel, tpm2-tools and
// keylime: "sha1", "sha256", "sha384", "sha512", "sm3", "sm3_256", "sm3-256",
// upper case variants, and a TPM_ALG_ID as "0x000b" or "tpm_alg_0x000b".
func ParseAlg(s string) (Alg, error) {
	name := strings.ToLower(strings.TrimSpace(s))
	switch name {
	case "sm3", "sm3-256", "sm3_256":
		return SM3_256, nil
	}
	for alg, info := range algs {
		if info.name == name {
			return alg, nil
		}
	}

	hex := strings.TrimPrefix(name, "tpm_alg_")
	if strings.HasPrefix(hex, "0x") {
		id, err := strconv.ParseUint(hex[2:], 16, 16)
		if err == nil {
			return Alg(id), nil
		}
	}
	return 0, fmt.Errorf("unknown hash algorithm %q: use sha1, sha256, sha384, sha512, sm3_256 or a TPM_ALG_ID such as 0x000b", s)
}

// ParseAlgList parses a comma-separated list of algorithm names.
func ParseAlgList(s string) ([]Alg, error) {
	var list []Alg
	for _, part := range strings.Split(s, ",") {
		if strings.TrimSpace(part) == "" {
			continue
		}
		alg, err := ParseAlg(part)
		if err != nil {
			return nil, err
		}
		list = append(list, alg)
	}
	return list, nil
}
