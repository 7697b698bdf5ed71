// Package shasum computes SHA-1 and SHA-256 digests of short messages, the
// template hashes and PCR extends that dominate a log replay.
//
// On amd64 processors with the SHA extensions it runs its own SHA-NI
// compression functions. crypto/sha1 and crypto/sha256 use the same
// instructions, but their one-shot sums also copy and pad through a digest
// type. A chained SHA-256 PCR extend took 115 to 118 ns through
// crypto/sha256 and 81 to 83 ns here (BenchmarkCryptoExtendSHA256 and
// BenchmarkExtendSHA256, Go 1.26, on the machine in docs/benchmarks.md).
// Elsewhere the functions call crypto/sha1 and crypto/sha256.
package shasum

import (
	"crypto/sha1"
	"crypto/sha256"
	"encoding/binary"
)

var (
	iv1   = [5]uint32{0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476, 0xc3d2e1f0}
	iv256 = [8]uint32{0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19}
)

// SHA1 returns the SHA-1 digest of p.
func SHA1(p []byte) [sha1.Size]byte {
	if !useSHANI {
		return sha1.Sum(p)
	}

	h := iv1
	var tail [128]byte
	full, end := pad(p, &tail)
	if full > 0 {
		block1(&h, p[:full])
	}
	block1(&h, tail[:end])

	var out [sha1.Size]byte
	putSHA1(&out, &h)
	return out
}

// SHA256 returns the SHA-256 digest of p.
func SHA256(p []byte) [sha256.Size]byte {
	if !useSHANI {
		return sha256.Sum256(p)
	}

	h := iv256
	var tail [128]byte
	full, end := pad(p, &tail)
	if full > 0 {
		block256(&h, p[:full])
	}
	block256(&h, tail[:end])

	var out [sha256.Size]byte
	putSHA256(&out, &h)
	return out
}

// pad splits p for the compression function. p[:full] are whole blocks to
// compress as they are, and tail[:end] contains the rest of p with the
// padding that SHA-1 and SHA-256 share (FIPS 180-4, section 5.1.1).
func pad(p []byte, tail *[128]byte) (full, end int) {
	// A message that fits two blocks with its padding, which covers every
	// extend and the templates of a usual ima-ng entry, goes in one call.
	if len(p) > len(tail)-9 {
		full = len(p) &^ 63
	}

	n := copy(tail[:], p[full:])
	tail[n] = 0x80
	end = (n + 9 + 63) &^ 63
	binary.BigEndian.PutUint64(tail[end-8:end], uint64(len(p))*8)
	return full, end
}

// ExtendSHA1 sets value to SHA-1(value || msg), the TPM's PCR extend in a
// SHA-1 bank.
func ExtendSHA1(value, msg *[sha1.Size]byte) {
	if !useSHANI {
		var buf [2 * sha1.Size]byte
		copy(buf[:], value[:])
		copy(buf[sha1.Size:], msg[:])
		*value = sha1.Sum(buf[:])
		return
	}

	// The 40-byte message and its padding fill one block; the length
	// field holds 320 bits.
	var block [64]byte
	copy(block[:], value[:])
	copy(block[sha1.Size:], msg[:])
	block[2*sha1.Size] = 0x80
	binary.BigEndian.PutUint64(block[56:], 2*sha1.Size*8)

	h := iv1
	block1(&h, block[:])
	putSHA1(value, &h)
}

// ExtendSHA256 sets value to SHA-256(value || msg), the TPM's PCR extend in
// a SHA-256 bank.
func ExtendSHA256(value, msg *[sha256.Size]byte) {
	if !useSHANI {
		var buf [2 * sha256.Size]byte
		copy(buf[:], value[:])
		copy(buf[sha256.Size:], msg[:])
		*value = sha256.Sum256(buf[:])
		return
	}

	// The 64-byte message fills the first block, and the second holds
	// only the padding, with 512 bits in the length field.
	var blocks [128]byte
	copy(blocks[:], value[:])
	copy(blocks[sha256.Size:], msg[:])
	blocks[64] = 0x80
	binary.BigEndian.PutUint64(blocks[120:], 2*sha256.Size*8)

	h := iv256
	block256(&h, blocks[:])
	putSHA256(value, &h)
}

// putSHA1 and putSHA256 write a final state as the digest's big-endian
// bytes. Constant indexes let the compiler drop the bounds checks of a loop.
func putSHA1(out *[sha1.Size]byte, h *[5]uint32) {
	binary.BigEndian.PutUint32(out[0:], h[0])
	binary.BigEndian.PutUint32(out[4:], h[1])
	binary.BigEndian.PutUint32(out[8:], h[2])
	binary.BigEndian.PutUint32(out[12:], h[3])
	binary.BigEndian.PutUint32(out[16:], h[4])
}

func putSHA256(out *[sha256.Size]byte, h *[8]uint32) {
	binary.BigEndian.PutUint32(out[0:], h[0])
	binary.BigEndian.PutUint32(out[4:], h[1])
	binary.BigEndian.PutUint32(out[8:], h[2])
	binary.BigEndian.PutUint32(out[12:], h[3])
	binary.BigEndian.PutUint32(out[16:], h[4])
	binary.BigEndian.PutUint32(out[20:], h[5])
	binary.BigEndian.PutUint32(out[24:], h[6])
	binary.BigEndian.PutUint32(out[28:], h[7])
}
