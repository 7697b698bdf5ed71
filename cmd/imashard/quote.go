package main

import (
	"bytes"
	"crypto"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/imashard/imashard/pkg/pcr"
	"github.com/imashard/imashard/pkg/tpm"
)

// Files written by `imashard quote` and read by `imashard quote verify`.
// The first four match tpm2_quote's -m, -s and -o outputs and a -u key, so
// tpm2_checkquote reads them too.
const (
	quoteMessageFile   = "quote.msg"  // marshaled TPMS_ATTEST
	quoteSignatureFile = "quote.sig"  // marshaled TPMT_SIGNATURE
	quotePCRFile       = "quote.pcrs" // tpm2-tools serialized PCR values
	quoteAKFile        = "ak.pem"
	quoteJSONFile      = "quote.json"
)

// quoteJSON is imashard's own record of a quote. Byte fields are hex.
type quoteJSON struct {
	Attest    string                       `json:"attest"`
	Signature string                       `json:"signature"`
	Nonce     string                       `json:"nonce"`
	Banks     []string                     `json:"banks"`
	PCRs      []int                        `json:"pcrs"`
	Values    map[string]map[string]string `json:"values"`
	AKPublic  string                       `json:"ak_public"`
	AKName    string                       `json:"ak_name"`
}

// runQuote makes a quote, or verifies one with `quote verify`.
func runQuote(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "verify" {
		return runQuoteVerify(args[1:], stdin, stdout, stderr)
	}

	fs := newFlagSet("quote", "quote --nonce HEX --pcr N,... [--bank ALG,...] --out DIR [--alg ecc|rsa] [--handle HANDLE] [--tpm SPEC]\n       imashard quote verify --ak PEM --nonce HEX [--pcrs FILE] [--json] DIR", stderr)
	tpmSpec := addTPMFlag(fs)
	ak := addAKFlags(fs)
	nonceHex := fs.String("nonce", "", "qualifying data for the quote in hex, from the verifier (at most the TPM's limit, 66 bytes on TPMs with SHA-512)")
	pcrList := fs.String("pcr", "", "PCR indexes to quote: a comma-separated list of indexes and ranges such as 0-7,10 (required)")
	bankList := fs.String("bank", "", "comma-separated PCR banks to quote (default: every allocated bank)")
	outDir := fs.String("out", "", "directory for quote.msg (TPMS_ATTEST), quote.sig (TPMT_SIGNATURE), quote.pcrs (tpm2-tools PCR file), ak.pem and quote.json; created if missing, existing files are never replaced (required)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("%w: quote takes no arguments, got %q", errUsage, fs.Args())
	}
	if *pcrList == "" || *outDir == "" || *nonceHex == "" {
		return fmt.Errorf("%w: quote needs --nonce, --pcr and --out", errUsage)
	}
	nonce, err := parseNonce(*nonceHex)
	if err != nil {
		return err
	}
	indexes, err := parsePCRList(*pcrList)
	if err != nil {
		return err
	}
	opts, err := ak.options()
	if err != nil {
		return err
	}

	t, err := tpm.Open(*tpmSpec)
	if err != nil {
		return err
	}
	defer t.Close()
	banks, err := selectBanks(t, *bankList)
	if err != nil {
		return err
	}

	key, err := t.LoadAK(opts)
	if err != nil {
		return err
	}
	q, values, quoteErr := t.QuoteWithValues(key, nonce, banks, indexes)
	if err := errors.Join(quoteErr, t.FlushAK(key)); err != nil {
		return err
	}

	akPEM, err := publicKeyPEM(key.PublicKey)
	if err != nil {
		return err
	}
	var pcrFile bytes.Buffer
	if err := tpm.WriteTPM2ToolsPCRs(&pcrFile, banks, indexes, values); err != nil {
		return err
	}
	record := quoteJSON{
		Attest:    hex.EncodeToString(q.Attest),
		Signature: hex.EncodeToString(q.Signature),
		Nonce:     hex.EncodeToString(nonce),
		PCRs:      indexes,
		AKPublic:  hex.EncodeToString(key.Public),
		AKName:    hex.EncodeToString(key.Name),
	}
	for _, b := range banks {
		record.Banks = append(record.Banks, b.String())
	}
	var valuesJSON bytes.Buffer
	if err := tpm.WritePCRs(&valuesJSON, values, tpm.FormatJSON); err != nil {
		return err
	}
	if err := json.Unmarshal(valuesJSON.Bytes(), &record.Values); err != nil {
		return err
	}
	recordJSON, err := json.MarshalIndent(record, "", "  ")
	if err != nil {
		return err
	}

	if err := os.MkdirAll(*outDir, 0o755); err != nil {
		return fmt.Errorf("creating --out directory: %w", err)
	}
	files := []struct {
		name string
		data []byte
	}{
		{quoteMessageFile, q.Attest},
		{quoteSignatureFile, q.Signature},
		{quotePCRFile, pcrFile.Bytes()},
		{quoteAKFile, akPEM},
		{quoteJSONFile, append(recordJSON, '\n')},
	}
	for _, f := range files {
		if err := writeNewFile(*outDir, f.name, f.data); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "quote over PCRs %v in banks %v written to %s\n", indexes, banks, *outDir)
	return nil
}

// runQuoteVerify checks a quote directory without a TPM.
func runQuoteVerify(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("quote verify", "quote verify --ak PEM --nonce HEX [--pcrs FILE] [--json] DIR", stderr)
	akPath := fs.String("ak", "", "AK public key: a PEM file (PUBLIC KEY) or a TPM2B_PUBLIC file such as ak.pub (required)")
	nonceHex := fs.String("nonce", "", "expected qualifying data in hex (required; pass \"\" for none)")
	pcrsPath := fs.String("pcrs", "", "PCR values the quote must cover: a tpm2-tools PCR file (tpm2_quote -o, quote.pcrs) or imashard's PCR JSON (default: DIR/quote.pcrs)")
	asJSON := fs.Bool("json", false, "print the decoded quote as JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: quote verify takes one directory with quote.msg and quote.sig", errUsage)
	}
	if *akPath == "" {
		return fmt.Errorf("%w: quote verify needs --ak", errUsage)
	}
	nonceSet := false
	fs.Visit(func(f *flag.Flag) { nonceSet = nonceSet || f.Name == "nonce" })
	if !nonceSet {
		return fmt.Errorf("%w: quote verify needs --nonce (use --nonce \"\" for a quote without one)", errUsage)
	}
	nonce, err := parseNonce(*nonceHex)
	if err != nil {
		return err
	}
	dir := fs.Arg(0)
	if *pcrsPath == "" {
		*pcrsPath = filepath.Join(dir, quotePCRFile)
	}

	key, err := readAKPublic(*akPath)
	if err != nil {
		return err
	}
	attest, err := readSmallFile(filepath.Join(dir, quoteMessageFile))
	if err != nil {
		return fmt.Errorf("reading the quote message: %w", err)
	}
	sig, err := readSmallFile(filepath.Join(dir, quoteSignatureFile))
	if err != nil {
		return fmt.Errorf("reading the quote signature: %w", err)
	}
	values, err := readPCRFile(*pcrsPath)
	if err != nil {
		return err
	}

	info, err := tpm.VerifyQuote(key, &tpm.Quote{Attest: attest, Signature: sig}, nonce, values)
	if err != nil {
		return fmt.Errorf("quote in %s: %w", dir, err)
	}

	if *asJSON {
		out := quoteInfoJSON{
			OK:              true,
			ExtraData:       hex.EncodeToString(info.ExtraData),
			Selection:       make(map[string][]int),
			PCRDigest:       hex.EncodeToString(info.PCRDigest),
			Clock:           info.Clock,
			ResetCount:      info.ResetCount,
			RestartCount:    info.RestartCount,
			Safe:            info.Safe,
			FirmwareVersion: fmt.Sprintf("%#016x", info.FirmwareVersion),
			QualifiedSigner: hex.EncodeToString(info.QualifiedSigner),
		}
		for _, b := range info.Banks {
			out.Banks = append(out.Banks, b.String())
			out.Selection[b.String()] = info.Selection[b]
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	fmt.Fprintf(stdout, "quote OK: banks %v, selection %v, pcrDigest %x, clock %d ms, resetCount %d, restartCount %d, safe %t\n",
		info.Banks, info.Selection, info.PCRDigest, info.Clock, info.ResetCount, info.RestartCount, info.Safe)
	return nil
}

// quoteInfoJSON is the --json output of quote verify. Byte fields are hex.
type quoteInfoJSON struct {
	OK              bool             `json:"ok"`
	ExtraData       string           `json:"extra_data"`
	Banks           []string         `json:"banks"`
	Selection       map[string][]int `json:"selection"`
	PCRDigest       string           `json:"pcr_digest"`
	Clock           uint64           `json:"clock_ms"`
	ResetCount      uint32           `json:"reset_count"`
	RestartCount    uint32           `json:"restart_count"`
	Safe            bool             `json:"safe"`
	FirmwareVersion string           `json:"firmware_version"`
	QualifiedSigner string           `json:"qualified_signer"`
}

// readAKPublic reads a PEM public key or a TPM2B_PUBLIC.
func readAKPublic(path string) (crypto.PublicKey, error) {
	data, err := readSmallFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the AK public key: %w", err)
	}
	if block, _ := pem.Decode(data); block != nil {
		if block.Type != "PUBLIC KEY" {
			return nil, fmt.Errorf("AK public key %s: %w: PEM block %q is not a \"PUBLIC KEY\" (SubjectPublicKeyInfo): extract the public key with %s",
				path, tpm.ErrUnsupportedKey, block.Type, pemExtractCommand(block.Type, path))
		}
		key, err := tpm.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("AK public key %s: %w", path, err)
		}
		return key, nil
	}
	key, _, err := tpm.ParseAKPublic(data)
	if err != nil {
		return nil, fmt.Errorf("AK public key %s is neither PEM nor a TPM2B_PUBLIC: %w", path, err)
	}
	return key, nil
}

// pemExtractCommand returns an openssl command line that writes the
// SubjectPublicKeyInfo of a PEM block of type blockType in path to ak.pem.
func pemExtractCommand(blockType, path string) string {
	switch {
	case blockType == "CERTIFICATE":
		return "openssl x509 -in " + path + " -pubkey -noout -out ak.pem"
	case strings.HasSuffix(blockType, "PUBLIC KEY"):
		return "openssl pkey -pubin -in " + path + " -out ak.pem"
	default:
		return "openssl pkey -in " + path + " -pubout -out ak.pem"
	}
}

// readPCRFile reads imashard's PCR JSON or a tpm2-tools serialized PCR file.
func readPCRFile(path string) (pcr.Values, error) {
	data, err := readSmallFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading PCR values: %w", err)
	}
	if trimmed := bytes.TrimSpace(data); len(trimmed) > 0 && trimmed[0] == '{' {
		values, err := tpm.ParsePCRsJSON(trimmed)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return values, nil
	}
	values, _, err := tpm.ParseTPM2ToolsPCRs(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return values, nil
}
