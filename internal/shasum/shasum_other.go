//go:build !amd64 || purego

package shasum

const shaniBuilt = false

var useSHANI = false

func block1(h *[5]uint32, p []byte)   { panic("shasum: no SHA-NI code on this architecture") }
func block256(h *[8]uint32, p []byte) { panic("shasum: no SHA-NI code on this architecture") }
