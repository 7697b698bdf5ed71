package main

import (
	"crypto"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"

	"github.com/imashard/imashard/pkg/tpm"
)

// runAk dispatches the ak subcommands.
func runAk(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "export" {
		return runAkExport(args[1:], stdin, stdout, stderr)
	}
	fmt.Fprintln(stderr, "usage: imashard ak export [--out DIR] [--json] [--alg ecc|rsa] [--handle HANDLE] [--tpm SPEC]")
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
		return nil
	}
	if len(args) > 0 {
		return fmt.Errorf("%w: unknown ak subcommand %q: use export", errUsage, args[0])
	}
	return fmt.Errorf("%w: ak needs a subcommand: export", errUsage)
}

type akFlags struct {
	alg    *string
	handle *string
}

func addAKFlags(fs *flag.FlagSet) akFlags {
	return akFlags{
		alg:    fs.String("alg", "ecc", "algorithm of the derived AK: ecc (NIST P-256, ECDSA-SHA256) or rsa (RSA-2048, RSASSA-SHA256)"),
		handle: fs.String("handle", "", "persistent handle of an existing AK, such as 0x81010002 (default: derive the primary AK, which needs no stored state)"),
	}
}

func (f akFlags) options() (tpm.AKOptions, error) {
	opts := tpm.AKOptions{Alg: *f.alg}
	if *f.alg != "ecc" && *f.alg != "rsa" {
		return opts, fmt.Errorf("%w: --alg %q: use ecc or rsa", errUsage, *f.alg)
	}
	if *f.handle != "" {
		h, err := strconv.ParseUint(*f.handle, 0, 32)
		if err != nil {
			return opts, fmt.Errorf("%w: --handle %q is not a 32-bit number such as 0x81010002", errUsage, *f.handle)
		}
		opts.Handle = uint32(h)
	}
	return opts, nil
}

func publicKeyPEM(key crypto.PublicKey) ([]byte, error) {
	der, err := tpm.MarshalPKIXPublicKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

type akExportJSON struct {
	AK struct {
		Alg    string `json:"alg,omitempty"`
		Handle string `json:"handle,omitempty"`
		Public string `json:"public"` // hex TPM2B_PUBLIC
		Name   string `json:"name"`   // hex nameAlg || digest
		PEM    string `json:"pem"`
	} `json:"ak"`
	EK []ekJSON `json:"ek"`
}

type ekJSON struct {
	Alg         string `json:"alg"`
	Public      string `json:"public"` // hex TPM2B_PUBLIC
	PEM         string `json:"pem"`
	CertIndex   string `json:"cert_index"`
	Certificate string `json:"certificate,omitempty"` // PEM, absent when NV holds none
}

// runAkExport writes what a verifier needs to enroll the machine: the AK
// public area, PEM and name, and the EK public keys and certificates.
func runAkExport(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("ak export", "ak export [--out DIR] [--json] [--alg ecc|rsa] [--handle HANDLE] [--tpm SPEC]", stderr)
	tpmSpec := addTPMFlag(fs)
	ak := addAKFlags(fs)
	outDir := fs.String("out", "", "directory to write ak.pub (TPM2B_PUBLIC), ak.pem, ak.name, ek-rsa.pem, ek-ecc.pem and ek-*.crt (DER) into; it is created if missing and existing files are never replaced")
	asJSON := fs.Bool("json", false, "print the export as JSON on standard output")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("%w: ak export takes no arguments, got %q", errUsage, fs.Args())
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

	key, err := t.LoadAK(opts)
	if err != nil {
		return err
	}
	if err := t.FlushAK(key); err != nil {
		return err
	}
	akPEM, err := publicKeyPEM(key.PublicKey)
	if err != nil {
		return fmt.Errorf("encoding the AK public key as PEM: %w", err)
	}

	var export akExportJSON
	if opts.Handle != 0 {
		export.AK.Handle = fmt.Sprintf("%#08x", opts.Handle)
	} else {
		export.AK.Alg = opts.Alg
	}
	export.AK.Public = hex.EncodeToString(key.Public)
	export.AK.Name = hex.EncodeToString(key.Name)
	export.AK.PEM = string(akPEM)

	files := map[string][]byte{"ak.pub": key.Public, "ak.pem": akPEM, "ak.name": key.Name}
	for _, alg := range []string{"rsa", "ecc"} {
		ek, err := t.ReadEK(alg)
		if err != nil {
			// A TPM may lack one of the algorithms; the other EK still
			// enrolls the machine.
			slog.Warn("skipping EK", "alg", alg, "err", err)
			continue
		}
		ekPEM, err := publicKeyPEM(ek.PublicKey)
		if err != nil {
			return fmt.Errorf("encoding the %s EK public key as PEM: %w", alg, err)
		}
		entry := ekJSON{Alg: alg, Public: hex.EncodeToString(ek.Public), PEM: string(ekPEM), CertIndex: fmt.Sprintf("%#08x", ek.CertIndex)}
		files["ek-"+alg+".pem"] = ekPEM
		if ek.Certificate != nil {
			entry.Certificate = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ek.Certificate}))
			files["ek-"+alg+".crt"] = ek.Certificate
		} else {
			slog.Info("no EK certificate in NV", "alg", alg, "index", entry.CertIndex)
		}
		export.EK = append(export.EK, entry)
	}

	if *outDir != "" {
		if err := os.MkdirAll(*outDir, 0o755); err != nil {
			return fmt.Errorf("creating --out directory: %w", err)
		}
		for _, name := range []string{"ak.pub", "ak.pem", "ak.name", "ek-rsa.pem", "ek-rsa.crt", "ek-ecc.pem", "ek-ecc.crt"} {
			if data, ok := files[name]; ok {
				if err := writeNewFile(*outDir, name, data); err != nil {
					return err
				}
			}
		}
	}

	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(export)
	}
	fmt.Fprintf(stdout, "AK name: %s\n%s", export.AK.Name, akPEM)
	for _, ek := range export.EK {
		cert := "no certificate in NV"
		if ek.Certificate != "" {
			cert = "certificate in NV " + ek.CertIndex
		}
		fmt.Fprintf(stdout, "EK %s: %s\n", ek.Alg, cert)
	}
	return nil
}
