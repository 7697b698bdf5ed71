package imalog

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.NewReplacer(" ", "", "\n", "").Replace(s))
	if err != nil {
		t.Fatalf("bad hex in test: %v", err)
	}
	return b
}

func readFile(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type entryReader interface {
	Next() (*Entry, error)
}

// readAll returns the entries before the first error, and that error (nil
// at a clean end).
func readAll(r entryReader) ([]*Entry, error) {
	var entries []*Entry
	for {
		e, err := r.Next()
		if errors.Is(err, io.EOF) {
			return entries, nil
		}
		if err != nil {
			return entries, err
		}
		entries = append(entries, e)
	}
}

func readBinary(t testing.TB, data []byte, opts Options) ([]*Entry, *Reader, error) {
	t.Helper()
	r := NewReader(bytes.NewReader(data), opts)
	entries, err := readAll(r)
	return entries, r, err
}
