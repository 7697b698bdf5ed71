package trim

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/imashard/imashard/pkg/imalog"
)

// SplitWith returns a SplitFunc that parses binary lists with the imalog
// reader, so a trim compares exactly the bytes the shards store as Raw.
func SplitWith(opts imalog.Options) SplitFunc {
	return func(list []byte) ([][]byte, error) {
		r := imalog.NewReader(bytes.NewReader(list), opts)
		var entries [][]byte
		for {
			e, err := r.Next()
			if errors.Is(err, io.EOF) {
				return entries, nil
			}
			if err != nil {
				return nil, fmt.Errorf("entry %d: %w", len(entries), err)
			}
			entries = append(entries, e.Raw)
		}
	}
}
