package pcr

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Readers and writers for the PCR value files people already have:
//   - the kernel's sysfs files /sys/class/tpm/tpm0/pcr-<alg>/<n> (Linux 5.12
//     and later), one upper-case hex value and a newline per file;
//   - evmctl's --pcrs files, one bank per file, lines "PCR-NN: hex" (the
//     ibmtss variant "PCR NN: xx xx ..." with spaced bytes is read too);
//   - tpm2_pcrread's YAML output: a "<alg>:" line per bank, then
//     "<n> : 0x<HEX>" lines.

// ErrInvalidPCRFile: a PCR value file does not have the expected format.
var ErrInvalidPCRFile = errors.New("invalid PCR value file")

// maxPCRIndex bounds indexes read from files; TPMs have 24 PCRs, and IMA
// logs may name higher indexes that no TPM extends.
const maxPCRIndex = 1 << 16

// maxValuesFileSize bounds the bytes read from one PCR value file, so that a
// device such as /dev/zero passed by mistake fails instead of exhausting
// memory. tpm2_pcrread output for 24 PCRs in four banks is under 10 KiB.
const maxValuesFileSize = 1 << 20

// readBoundedFile reads path like os.ReadFile but fails when the file holds
// more than maxValuesFileSize bytes.
func readBoundedFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()

	data, err := io.ReadAll(io.LimitReader(f, maxValuesFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxValuesFileSize {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes, so it is not a PCR value file", ErrInvalidPCRFile, path, maxValuesFileSize)
	}
	return data, nil
}

// ReadSysfs reads PCR values from sysfs: a TPM directory such as
// /sys/class/tpm/tpm0 (every pcr-<alg> directory in it), one pcr-<alg>
// directory, or one pcr-<alg>/<n> file. Banks and indexes, when not empty,
// limit what is read, and each one must then exist.
func ReadSysfs(path string, banks []Alg, indexes []int) (Values, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("read PCR values: %w", err)
	}
	v := Values{}
	if !info.IsDir() {
		alg, err := sysfsBank(filepath.Base(filepath.Dir(path)))
		if err != nil {
			return nil, err
		}
		index, err := strconv.Atoi(filepath.Base(path))
		if err != nil || index < 0 || index >= maxPCRIndex {
			return nil, fmt.Errorf("%w: %s: file name is not a PCR index", ErrInvalidPCRFile, path)
		}
		return v, readSysfsFile(v, alg, index, path)
	}

	bankDirs := []string{path}
	if _, err := sysfsBank(filepath.Base(path)); err != nil {
		bankDirs, _ = filepath.Glob(filepath.Join(path, "pcr-*"))
		if len(bankDirs) == 0 {
			return nil, fmt.Errorf("%w: %s has no pcr-<alg> directories: the kernel shows them since Linux 5.12", ErrInvalidPCRFile, path)
		}
	}
	for _, dir := range bankDirs {
		alg, err := sysfsBank(filepath.Base(dir))
		if err != nil {
			return nil, err
		}
		if len(banks) > 0 && !containsAlg(banks, alg) {
			continue
		}
		requested := indexes
		if len(requested) == 0 {
			names, err := os.ReadDir(dir)
			if err != nil {
				return nil, fmt.Errorf("read PCR values: %w", err)
			}
			for _, n := range names {
				if index, err := strconv.Atoi(n.Name()); err == nil && index >= 0 && index < maxPCRIndex {
					requested = append(requested, index)
				}
			}
		}
		for _, index := range requested {
			if err := readSysfsFile(v, alg, index, filepath.Join(dir, strconv.Itoa(index))); err != nil {
				return nil, err
			}
		}
	}
	for _, alg := range banks {
		if _, ok := v[alg]; !ok {
			return nil, fmt.Errorf("%w: no pcr-%s directory under %s", ErrInvalidPCRFile, alg, path)
		}
	}
	return v, nil
}

func sysfsBank(name string) (Alg, error) {
	algName, ok := strings.CutPrefix(name, "pcr-")
	if !ok {
		return 0, fmt.Errorf("%w: %q is not a pcr-<alg> directory", ErrInvalidPCRFile, name)
	}
	return ParseAlg(algName)
}

func readSysfsFile(v Values, alg Alg, index int, path string) error {
	data, err := readBoundedFile(path)
	if err != nil {
		return fmt.Errorf("read PCR values: %w", err)
	}
	value, err := parseHexValue(string(data), alg)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrInvalidPCRFile, path, err)
	}
	v.Set(alg, index, value)
	return nil
}

// WriteSysfs writes v as dir/pcr-<alg>/<n> files in the kernel's format.
func WriteSysfs(dir string, v Values) error {
	for _, alg := range v.Banks() {
		bankDir := filepath.Join(dir, "pcr-"+alg.String())
		if err := os.MkdirAll(bankDir, 0o755); err != nil {
			return fmt.Errorf("write PCR values: %w", err)
		}
		for _, index := range v.Indexes(alg) {
			value, _ := v.Get(alg, index)
			line := strings.ToUpper(hex.EncodeToString(value)) + "\n"
			if err := os.WriteFile(filepath.Join(bankDir, strconv.Itoa(index)), []byte(line), 0o644); err != nil {
				return fmt.Errorf("write PCR values: %w", err)
			}
		}
	}
	return nil
}

// ParseEvmctl reads "PCR-NN: hex" lines (or "PCR NN: xx xx ..."). alg names
// the bank; zero takes it from each value's size (32 bytes: sha256).
// Other lines are ignored, as evmctl does.
func ParseEvmctl(r io.Reader, alg Alg) (Values, error) {
	v := Values{}
	scanner := bufio.NewScanner(r)
	for lineNo := 1; scanner.Scan(); lineNo++ {
		line := strings.TrimSpace(scanner.Text())
		rest, ok := strings.CutPrefix(line, "PCR")
		if !ok {
			continue
		}
		indexText, valueText, ok := strings.Cut(strings.TrimLeft(rest, "- "), ":")
		if !ok {
			return nil, fmt.Errorf("%w: line %d: no ':' after the PCR index", ErrInvalidPCRFile, lineNo)
		}
		index, err := strconv.Atoi(strings.TrimSpace(indexText))
		if err != nil || index < 0 || index >= maxPCRIndex {
			return nil, fmt.Errorf("%w: line %d: PCR index %q is not a number", ErrInvalidPCRFile, lineNo, indexText)
		}
		bank := alg
		value, err := parseHexValue(valueText, bank)
		if err != nil {
			return nil, fmt.Errorf("%w: line %d: %v", ErrInvalidPCRFile, lineNo, err)
		}
		if bank == 0 {
			bank = algForSize(len(value))
		}
		v.Set(bank, index, value)
	}
	if err := scanner.Err(); err != nil {
		return nil, fmt.Errorf("read PCR values: %w", err)
	}
	if len(v) == 0 {
		return nil, fmt.Errorf("%w: no \"PCR-NN: hex\" lines", ErrInvalidPCRFile)
	}
	return v, nil
}

// WriteEvmctl writes one bank as "PCR-NN: hex" lines for evmctl --pcrs.
// NOTE: evmctl 1.4 reads the lines in order from PCR-00 and ignores values
// after a gap, so give it every index from 0 up to the highest one.
func WriteEvmctl(w io.Writer, v Values, alg Alg) error {
	if len(v[alg]) == 0 {
		return fmt.Errorf("no %s PCR values to write", alg)
	}
	var b bytes.Buffer
	for _, index := range v.Indexes(alg) {
		value, _ := v.Get(alg, index)
		fmt.Fprintf(&b, "PCR-%02d: %x\n", index, value)
	}
	_, err := w.Write(b.Bytes())
	return err
}

// ParseTPM2PCRRead reads the YAML that tpm2_pcrread prints.
func ParseTPM2PCRRead(r io.Reader) (Values, error) {
	v := Values{}
	var bank Alg
	scanner := bufio.NewScanner(r)
	for lineNo := 1; scanner.Scan(); lineNo++ {
		line := strings.TrimSpace(scanner.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, value, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("%w: line %d: expected \"<alg>:\" or \"<n> : 0x<hex>\"", ErrInvalidPCRFile, lineNo)
		}
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		if value == "" {
			alg, err := ParseAlg(key)
			if err != nil {
				return nil, fmt.Errorf("%w: line %d: %v", ErrInvalidPCRFile, lineNo, err)
			}
			bank = alg
			continue
		}
		if bank == 0 {
			return nil, fmt.Errorf("%w: line %d: PCR value before any bank line", ErrInvalidPCRFile, lineNo)
		}
		index, err := strconv.Atoi(key)
		if err != nil || index < 0 || index >= maxPCRIndex {
			return nil, fmt.Errorf("%w: line %d: PCR index %q is not a number", ErrInvalidPCRFile, lineNo, key)
		}
		digest, err := parseHexValue(strings.TrimPrefix(strings.TrimPrefix(value, "0x"), "0X"), bank)
		if err != nil {
			return nil, fmt.Errorf("%w: line %d: %v", ErrInvalidPCRFile, lineNo, err)
		}
		v.Set(bank, index, digest)
	}
	if err := scanner.Err(); err != nil {
		return nil, fmt.Errorf("read PCR values: %w", err)
	}
	if len(v) == 0 {
		return nil, fmt.Errorf("%w: no PCR values", ErrInvalidPCRFile)
	}
	return v, nil
}

// WriteTPM2PCRRead writes v in tpm2_pcrread's YAML format.
func WriteTPM2PCRRead(w io.Writer, v Values) error {
	var b bytes.Buffer
	for _, alg := range v.Banks() {
		fmt.Fprintf(&b, "  %s:\n", alg)
		for _, index := range v.Indexes(alg) {
			value, _ := v.Get(alg, index)
			fmt.Fprintf(&b, "    %-2d: 0x%s\n", index, strings.ToUpper(hex.EncodeToString(value)))
		}
	}
	_, err := w.Write(b.Bytes())
	return err
}

// ReadValuesFile reads PCR values from path in whichever of the formats
// above it has. A "<alg>," prefix on path names the bank of an evmctl file,
// as evmctl's --pcrs option does.
func ReadValuesFile(path string) (Values, error) {
	var alg Alg
	if prefix, rest, ok := strings.Cut(path, ","); ok {
		a, err := ParseAlg(prefix)
		if err == nil {
			alg, path = a, rest
		}
	}
	info, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("read PCR values: %w", err)
	}
	if info.IsDir() || strings.HasPrefix(filepath.Base(filepath.Dir(path)), "pcr-") {
		return ReadSysfs(path, nil, nil)
	}
	data, err := readBoundedFile(path)
	if err != nil {
		return nil, fmt.Errorf("read PCR values: %w", err)
	}
	if bytes.HasPrefix(bytes.TrimSpace(data), []byte("PCR")) {
		v, err := ParseEvmctl(bytes.NewReader(data), alg)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return v, nil
	}
	v, err := ParseTPM2PCRRead(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("%s: %w (expected sysfs files, \"PCR-NN: hex\" lines or tpm2_pcrread output)", path, err)
	}
	return v, nil
}

// parseHexValue decodes hex, ignoring spaces, and checks the size for alg
// (any known digest size when alg is zero).
func parseHexValue(text string, alg Alg) ([]byte, error) {
	clean := strings.Join(strings.Fields(text), "")
	value, err := hex.DecodeString(clean)
	if err != nil {
		return nil, fmt.Errorf("value %q is not hex", text)
	}
	switch {
	case alg != 0 && alg.Known() && len(value) != alg.Size():
		return nil, fmt.Errorf("%s value is %d bytes, expected %d", alg, len(value), alg.Size())
	case alg == 0 && algForSize(len(value)) == 0:
		return nil, fmt.Errorf("value of %d bytes fits no known bank", len(value))
	}
	return value, nil
}

func algForSize(size int) Alg {
	switch size {
	case 20:
		return SHA1
	case 32:
		return SHA256
	case 48:
		return SHA384
	case 64:
		return SHA512
	}
	return 0
}

func containsAlg(list []Alg, alg Alg) bool {
	for _, a := range list {
		if a == alg {
			return true
		}
	}
	return false
}
