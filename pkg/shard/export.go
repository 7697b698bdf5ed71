package shard

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/imashard/imashard/pkg/pcr"
	"github.com/imashard/imashard/pkg/tpm"
)

// Export names the files ExportTPM2Tools wrote.
type Export struct {
	Message          string            // TPMS_ATTEST, for tpm2_checkquote -m
	Signature        string            // TPMT_SIGNATURE, for tpm2_checkquote -s
	AKPEM            string            // AK public key in PEM, for tpm2_checkquote -u
	PCRs             string            // end values in tpm2-tools' PCR file format, for tpm2_checkquote -f
	Qualification    string            // the quote's qualifying data (32 raw bytes), for tpm2_checkquote -q
	QualificationHex string            // the same in hex
	Measurements     string            // the entry section as a binary_runtime_measurements file
	EvmctlPCRs       map[string]string // bank -> "PCR-NN: hex" file of the end values, for evmctl --pcrs
}

// ExportTPM2Tools writes the end quote of the shard at shardPath to outDir
// in the formats tpm2_checkquote and evmctl ima_measurement read. evmctl
// replays from zero, so its check applies to a shard whose start values are
// the TPM reset state, which is the first shard of a chain.
func ExportTPM2Tools(shardPath, outDir string) (*Export, error) {
	sf, err := Open(shardPath)
	if err != nil {
		return nil, err
	}
	defer sf.Close()
	h := sf.Header

	info, err := tpm.ParseQuote(&tpm.Quote{Attest: sf.Trailer.Attest, Signature: sf.Trailer.Signature})
	if err != nil {
		return nil, fmt.Errorf("shard %s: %w: %v", shardPath, ErrMalformed, err)
	}
	key, _, err := tpm.ParseAKPublic(h.AKPublic)
	if err != nil {
		return nil, fmt.Errorf("shard %s: %w: AK public area: %v", shardPath, ErrMalformed, err)
	}
	der, err := tpm.MarshalPKIXPublicKey(key)
	if err != nil {
		return nil, fmt.Errorf("shard %s: encode AK public key: %w", shardPath, err)
	}

	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return nil, fmt.Errorf("create export directory: %w", err)
	}
	ex := &Export{
		Message:       filepath.Join(outDir, "quote.msg"),
		Signature:     filepath.Join(outDir, "quote.sig"),
		AKPEM:         filepath.Join(outDir, "ak.pem"),
		PCRs:          filepath.Join(outDir, "quote.pcrs"),
		Qualification: filepath.Join(outDir, "quote.qualification"),
		Measurements:  filepath.Join(outDir, "binary_runtime_measurements"),
		EvmctlPCRs:    map[string]string{},
	}
	nonce := sha256.Sum256(sf.HeaderBytes)
	ex.QualificationHex = hex.EncodeToString(nonce[:])

	evmctlBanks := exportedEvmctlBanks(h.End)
	targets := []string{ex.Message, ex.Signature, ex.AKPEM, ex.PCRs, ex.Qualification, ex.Measurements}
	for _, alg := range evmctlBanks {
		targets = append(targets, evmctlPath(outDir, alg))
	}
	// Checking every name before writing the first one keeps a second
	// export into the same directory from leaving a mix of two shards.
	for _, path := range targets {
		if _, err := os.Lstat(path); err == nil {
			return nil, fmt.Errorf("export shard %s: %s: %w: choose an empty or new directory", shardPath, path, fs.ErrExist)
		}
	}

	files := map[string][]byte{
		ex.Message:       sf.Trailer.Attest,
		ex.Signature:     sf.Trailer.Signature,
		ex.AKPEM:         pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}),
		ex.Qualification: nonce[:],
	}
	for path, data := range files {
		if err := writeNewFile(path, data); err != nil {
			return nil, fmt.Errorf("export: %w", err)
		}
	}

	if err := writePCRFile(ex.PCRs, info, h.End); err != nil {
		return nil, err
	}
	if err := copySection(ex.Measurements, sf.Entries()); err != nil {
		return nil, err
	}
	for _, alg := range evmctlBanks {
		path := evmctlPath(outDir, alg)
		if err := writeEvmctlFile(path, h.End, alg); err != nil {
			return nil, err
		}
		ex.EvmctlPCRs[alg.String()] = path
	}
	return ex, nil
}

// exportedEvmctlBanks returns the banks of end that get an evmctl PCR file.
// evmctl 1.4 reads only sha1 and sha256 PCR files. For other banks it prints
// "Failed to read any TPM PCRs" and still exits 0, so a file for them would
// look like a passed check.
func exportedEvmctlBanks(end pcr.Values) []pcr.Alg {
	var banks []pcr.Alg
	for _, alg := range end.Banks() {
		if alg == pcr.SHA1 || alg == pcr.SHA256 {
			banks = append(banks, alg)
		}
	}
	return banks
}

func evmctlPath(outDir string, alg pcr.Alg) string {
	return filepath.Join(outDir, "pcrs-"+alg.String()+".txt")
}

// createNew creates path and fails with fs.ErrExist when it exists, so an
// export never replaces a file.
func createNew(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
}

func writeNewFile(path string, data []byte) error {
	f, err := createNew(path)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// writePCRFile writes the values in the quote's bank order, which is the
// order tpm2_checkquote hashes them in.
func writePCRFile(path string, info *tpm.QuoteInfo, end pcr.Values) error {
	var indexes []int
	for _, alg := range info.Banks {
		indexes = append(indexes, info.Selection[alg]...)
	}
	f, err := createNew(path)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if err := tpm.WriteTPM2ToolsPCRs(f, info.Banks, mergeIndexes(indexes, nil), end); err != nil {
		f.Close()
		return fmt.Errorf("export PCR file: %w", err)
	}
	return f.Close()
}

// writeEvmctlFile writes PCR 0 to 23 of one bank. evmctl 1.4 takes the PCR
// index of a line from its position in the file, not from its "PCR-NN"
// label, so PCRs the shard does not record are written as zero.
func writeEvmctlFile(path string, v pcr.Values, alg pcr.Alg) error {
	full := pcr.Values{}
	for index := 0; index <= maxQuotedPCR; index++ {
		value, ok := v.Get(alg, index)
		if !ok {
			value = pcr.Zero(alg)
		}
		full.Set(alg, index, value)
	}
	v = full

	f, err := createNew(path)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if err := pcr.WriteEvmctl(f, v, alg); err != nil {
		f.Close()
		return fmt.Errorf("export %s PCR values: %w", alg, err)
	}
	return f.Close()
}

func copySection(path string, r io.Reader) error {
	f, err := createNew(path)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return fmt.Errorf("export entries: %w", err)
	}
	return f.Close()
}
