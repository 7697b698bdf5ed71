//go:build amd64 && !purego

package shasum

// shaniBuilt reports whether this build contains the SHA-NI code.
const shaniBuilt = true

// The SHA-NI code needs the SHA extensions for its rounds and SSSE3 and
// SSE4.1 for its shuffles and blends.
var useSHANI = hasSHANI()

func hasSHANI() bool {
	maxLeaf, _, _, _ := cpuid(0, 0)
	if maxLeaf < 7 {
		return false
	}
	_, _, ecx1, _ := cpuid(1, 0)
	_, ebx7, _, _ := cpuid(7, 0)
	ssse3 := ecx1&(1<<9) != 0
	sse41 := ecx1&(1<<19) != 0
	sha := ebx7&(1<<29) != 0
	return ssse3 && sse41 && sha
}

// block1 runs the SHA-1 compression function on each 64-byte block of p.
//
//go:noescape
func block1(h *[5]uint32, p []byte)

// block256 runs the SHA-256 compression function on each 64-byte block of p.
//
//go:noescape
func block256(h *[8]uint32, p []byte)

func cpuid(leaf, subleaf uint32) (eax, ebx, ecx, edx uint32)
