package tpm

import (
	"encoding/binary"
	"testing"
)

func TestSplitQuoteResponseShort(t *testing.T) {
	// A response header (tag, size, code) and a parameterSize of 0, 1 and
	// 5: none has room for a whole TPM2B_ATTEST and its signature.
	for _, paramSize := range []uint32{0, 1, 5} {
		rsp := make([]byte, 14+int(paramSize))
		binary.BigEndian.PutUint32(rsp[10:14], paramSize)
		if paramSize == 5 {
			binary.BigEndian.PutUint16(rsp[14:16], 200)
		}
		for len(rsp) < 16 {
			rsp = append(rsp, 0)
		}
		if _, err := splitQuoteResponse(rsp); err == nil {
			t.Errorf("parameterSize %d: splitQuoteResponse succeeded, want an error", paramSize)
		}
	}
}
