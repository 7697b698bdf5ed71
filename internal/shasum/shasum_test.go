package shasum

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"math/rand/v2"
	"os"
	"runtime"
	"strings"
	"testing"
)

// withEachPath runs f once with the SHA-NI code, where the processor has
// it, and once with the crypto/sha1 and crypto/sha256 fallback.
func withEachPath(t *testing.T, f func(t *testing.T)) {
	saved := useSHANI
	t.Cleanup(func() { useSHANI = saved })

	if saved {
		t.Run("SHA-NI", f)
	}
	useSHANI = false
	t.Run("fallback", f)
	useSHANI = saved
}

func TestSumsMatchCrypto(t *testing.T) {
	withEachPath(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(1, 2))

		// Every length up to five blocks crosses each padding boundary:
		// 55 and 56 bytes, 119 and 120, and whole blocks.
		// Slicing at an odd offset checks that no load assumes the message
		// is aligned.
		for n := range 5*64 + 1 {
			buf := make([]byte, n+16)
			p := buf[n%16 : n%16+n]
			for i := range p {
				p[i] = byte(rng.Uint32())
			}

			if got, want := SHA1(p), sha1.Sum(p); got != want {
				t.Errorf("SHA1 of %d bytes = %x, crypto/sha1 gives %x", n, got, want)
			}
			if got, want := SHA256(p), sha256.Sum256(p); got != want {
				t.Errorf("SHA256 of %d bytes = %x, crypto/sha256 gives %x", n, got, want)
			}
		}
	})
}

func TestExtendsMatchCrypto(t *testing.T) {
	withEachPath(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(3, 4))
		var value1, msg1 [sha1.Size]byte
		var value256, msg256 [sha256.Size]byte

		// Each round extends the previous result, as a PCR does.
		for range 100 {
			for i := range msg1 {
				msg1[i] = byte(rng.Uint32())
			}
			for i := range msg256 {
				msg256[i] = byte(rng.Uint32())
			}

			want1 := sha1.Sum(append(value1[:], msg1[:]...))
			ExtendSHA1(&value1, &msg1)
			if value1 != want1 {
				t.Fatalf("ExtendSHA1 = %x, crypto/sha1 of value || msg gives %x", value1, want1)
			}

			want256 := sha256.Sum256(append(value256[:], msg256[:]...))
			ExtendSHA256(&value256, &msg256)
			if value256 != want256 {
				t.Fatalf("ExtendSHA256 = %x, crypto/sha256 of value || msg gives %x", value256, want256)
			}
		}
	})
}

func TestSumsKnownAnswers(t *testing.T) {
	withEachPath(t, func(t *testing.T) {
		// FIPS 180-4 examples ("abc" and the 448-bit message) and the
		// empty message.
		cases := []struct {
			msg          string
			sha1, sha256 string
		}{
			{"", "da39a3ee5e6b4b0d3255bfef95601890afd80709", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
			{"abc", "a9993e364706816aba3e25717850c26c9cd0d89d", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
			{"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", "84983e441c3bd26ebaae4aa1f95129e5e54670f1", "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
		}
		for _, c := range cases {
			if got := SHA1([]byte(c.msg)); hex.EncodeToString(got[:]) != c.sha1 {
				t.Errorf("SHA1(%q) = %x, want %s", c.msg, got, c.sha1)
			}
			if got := SHA256([]byte(c.msg)); hex.EncodeToString(got[:]) != c.sha256 {
				t.Errorf("SHA256(%q) = %x, want %s", c.msg, got, c.sha256)
			}
		}
	})
}

func TestLongMessageMatchesCrypto(t *testing.T) {
	withEachPath(t, func(t *testing.T) {
		// A million bytes runs the block loop of each compression function
		// many times from one call.
		p := bytes.Repeat([]byte("imashard"), 125000)
		if got, want := SHA1(p), sha1.Sum(p); got != want {
			t.Errorf("SHA1 of 1,000,000 bytes = %x, crypto/sha1 gives %x", got, want)
		}
		if got, want := SHA256(p), sha256.Sum256(p); got != want {
			t.Errorf("SHA256 of 1,000,000 bytes = %x, crypto/sha256 gives %x", got, want)
		}
	})
}

func TestSHANIDetected(t *testing.T) {
	// If the kernel reports the SHA extensions, the fast path must be the
	// one that runs; otherwise the tests above test only the fallback.
	if !shaniBuilt {
		t.Skipf("this build has no SHA-NI code (GOARCH %s, or the purego tag)", runtime.GOARCH)
	}
	cpuinfo, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		t.Skipf("cannot read /proc/cpuinfo: %v", err)
	}
	hasFlag := strings.Contains(string(cpuinfo), " sha_ni")
	if hasFlag != useSHANI {
		t.Errorf("/proc/cpuinfo lists sha_ni: %v, but useSHANI is %v", hasFlag, useSHANI)
	}
}

func FuzzSums(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("abc"))
	f.Add(make([]byte, 55))
	f.Add(make([]byte, 119))
	f.Add(make([]byte, 200))
	f.Fuzz(func(t *testing.T, p []byte) {
		if got, want := SHA1(p), sha1.Sum(p); got != want {
			t.Errorf("SHA1 of %d bytes = %x, crypto/sha1 gives %x", len(p), got, want)
		}
		if got, want := SHA256(p), sha256.Sum256(p); got != want {
			t.Errorf("SHA256 of %d bytes = %x, crypto/sha256 gives %x", len(p), got, want)
		}
	})
}

var sink1 [sha1.Size]byte
var sink256 [sha256.Size]byte

// The extend benchmarks chain each result into the next extend, as a PCR
// does, so they measure latency. The template benchmarks hash independent
// 90-byte messages, the template size in scripts/genlog's ima-ng list.

func BenchmarkExtendSHA1(b *testing.B) {
	var value, msg [sha1.Size]byte
	for b.Loop() {
		ExtendSHA1(&value, &msg)
	}
	sink1 = value
}

func BenchmarkExtendSHA256(b *testing.B) {
	var value, msg [sha256.Size]byte
	for b.Loop() {
		ExtendSHA256(&value, &msg)
	}
	sink256 = value
}

func BenchmarkCryptoExtendSHA1(b *testing.B) {
	var buf [2 * sha1.Size]byte
	for b.Loop() {
		sum := sha1.Sum(buf[:])
		copy(buf[:], sum[:])
	}
	copy(sink1[:], buf[:])
}

func BenchmarkCryptoExtendSHA256(b *testing.B) {
	var buf [2 * sha256.Size]byte
	for b.Loop() {
		sum := sha256.Sum256(buf[:])
		copy(buf[:], sum[:])
	}
	copy(sink256[:], buf[:])
}

func BenchmarkTemplateSHA1(b *testing.B) {
	p := make([]byte, 90)
	for b.Loop() {
		sink1 = SHA1(p)
	}
}

func BenchmarkTemplateSHA256(b *testing.B) {
	p := make([]byte, 90)
	for b.Loop() {
		sink256 = SHA256(p)
	}
}

func BenchmarkCryptoTemplateSHA1(b *testing.B) {
	p := make([]byte, 90)
	for b.Loop() {
		sink1 = sha1.Sum(p)
	}
}

func BenchmarkCryptoTemplateSHA256(b *testing.B) {
	p := make([]byte, 90)
	for b.Loop() {
		sink256 = sha256.Sum256(p)
	}
}
