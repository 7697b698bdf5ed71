// Command genlog writes a deterministic little-endian ima-ng measurement
// list with SHA-1 template digests for benchmarks, and the PCR 10 values it
// replays to in the sha1 and sha256 banks (per-bank rule) as evmctl-style
// "PCR-NN: hex" files.
//
// The PCR values are computed here with crypto/sha1 and crypto/sha256
// directly, not with imashard's replay package, so a benchmark run also
// cross-checks the replayer.
package main

import (
	"bufio"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/binary"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
)

func main() {
	entries := flag.Int("entries", 1000000, "number of entries to write")
	out := flag.String("out", ".", "directory for binary_runtime_measurements, pcrs-sha1.txt and pcrs-sha256.txt")
	flag.Parse()

	if err := generate(*out, *entries); err != nil {
		slog.Error("generating the list failed", "error", err)
		os.Exit(1)
	}
}

func generate(dir string, entries int) error {
	if entries < 0 {
		return fmt.Errorf("invalid entry count %d", entries)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	file, err := os.Create(filepath.Join(dir, "binary_runtime_measurements"))
	if err != nil {
		return err
	}
	defer file.Close()
	w := bufio.NewWriterSize(file, 1<<20)

	var pcr1 [sha1.Size]byte
	var pcr256 [sha256.Size]byte
	var data, entry []byte
	for i := range entries {
		// The file digest is the SHA-256 of the index; the path is about
		// 40 bytes, as in a real distribution's list.
		var seed [8]byte
		binary.LittleEndian.PutUint64(seed[:], uint64(i))
		fileDigest := sha256.Sum256(seed[:])
		name := fmt.Sprintf("/usr/lib/x86_64-linux-gnu/lib%07d.so.1", i)

		data = data[:0]
		data = binary.LittleEndian.AppendUint32(data, uint32(len("sha256:")+1+len(fileDigest)))
		data = append(data, "sha256:\x00"...)
		data = append(data, fileDigest[:]...)
		data = binary.LittleEndian.AppendUint32(data, uint32(len(name)+1))
		data = append(data, name...)
		data = append(data, 0)

		templateHash := sha1.Sum(data)
		entry = entry[:0]
		entry = binary.LittleEndian.AppendUint32(entry, 10)
		entry = append(entry, templateHash[:]...)
		entry = binary.LittleEndian.AppendUint32(entry, uint32(len("ima-ng")))
		entry = append(entry, "ima-ng"...)
		entry = binary.LittleEndian.AppendUint32(entry, uint32(len(data)))
		entry = append(entry, data...)
		if _, err := w.Write(entry); err != nil {
			return err
		}

		pcr1 = sha1.Sum(append(pcr1[:], templateHash[:]...))
		bankHash := sha256.Sum256(data)
		pcr256 = sha256.Sum256(append(pcr256[:], bankHash[:]...))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if err := file.Close(); err != nil {
		return err
	}

	if err := writePCRFile(filepath.Join(dir, "pcrs-sha1.txt"), pcr1[:]); err != nil {
		return err
	}
	return writePCRFile(filepath.Join(dir, "pcrs-sha256.txt"), pcr256[:])
}

// writePCRFile writes PCR-00 to PCR-23, zero except PCR 10, because evmctl
// 1.4 reads the lines in order from PCR-00 and stops at the first gap.
func writePCRFile(path string, pcr10 []byte) error {
	var b []byte
	for index := range 24 {
		value := make([]byte, len(pcr10))
		if index == 10 {
			value = pcr10
		}
		b = fmt.Appendf(b, "PCR-%02d: %x\n", index, value)
	}
	return os.WriteFile(path, b, 0o644)
}
