package imalog

import (
	"encoding/hex"
	"errors"
	"testing"

	"github.com/imashard/imashard/pkg/pcr"
)

func TestParseTemplateImatest(t *testing.T) {
	entries, _, err := readBinary(t, readFile(t, "ibmtss__utils_imatest.log.bin"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string][]*Template{}
	for _, e := range entries {
		tmpl, err := e.ParseTemplate()
		if err != nil {
			t.Errorf("entry %d (%s): %v", e.Index, e.TemplateName, err)
			continue
		}
		if tmpl.Unknown {
			t.Errorf("entry %d: template %q not recognised", e.Index, e.TemplateName)
		}
		byName[e.TemplateName] = append(byName[e.TemplateName], tmpl)
	}

	// Custom templates are named by their format string.
	for _, name := range []string{"d-ng|sig", "n-ng|d-ng", "n-ng|sig|d-ng", "n-ng|sig", "n", "sig"} {
		if len(byName[name]) == 0 {
			t.Errorf("no entry with custom template %q", name)
		}
	}

	if n := byName["n"]; len(n) > 0 {
		if got := string(n[0].Field("n").Name); got != "boot_aggregate" {
			t.Errorf("custom n field = %q", got)
		}
		if len(n[0].Field("n").Data) != 15 {
			t.Errorf("custom n field is %d bytes, want 15 with the NUL", len(n[0].Field("n").Data))
		}
	}
	if s := byName["sig"]; len(s) > 0 {
		if f := s[0].Field("sig"); len(f.Data) != 0 || f.Signature != nil {
			t.Errorf("empty sig field = %+v", f)
		}
	}

	for _, tmpl := range byName["ima-ngv2"] {
		d := tmpl.Field("d-ngv2").Digest
		if d.Type != "ima" || d.Algo != "sha256" || d.Alg != pcr.SHA256 || len(d.Digest) != 32 {
			t.Errorf("d-ngv2 = %+v", d)
		}
		if got := d.String(); got[:11] != "ima:sha256:" {
			t.Errorf("d-ngv2 renders as %q", got)
		}
	}
	if len(byName["ima-sigv2"]) == 0 || len(byName["ima-ngv2"]) == 0 {
		t.Error("missing ima-ngv2 or ima-sigv2 entries")
	}

	modsig := byName["ima-modsig"]
	if len(modsig) != 2 {
		t.Fatalf("%d ima-modsig entries, want 2", len(modsig))
	}
	if f := modsig[0].Field("d-modsig"); len(f.Data) != 0 || f.Digest != nil {
		t.Errorf("first d-modsig should be empty: %+v", f)
	}
	if f := modsig[0].Field("modsig"); len(f.Data) != 0 {
		t.Errorf("first modsig should be empty: %d bytes", len(f.Data))
	}
	if f := modsig[1].Field("modsig"); len(f.Data) != 397 {
		t.Errorf("second modsig is %d bytes, want 397", len(f.Data))
	}
	if f := modsig[1].Field("d-modsig"); f.Digest == nil || f.Problem != "" {
		t.Errorf("second d-modsig = %+v", f)
	}

	evm := byName["evm-sig"]
	if len(evm) != 1 {
		t.Fatalf("%d evm-sig entries, want 1", len(evm))
	}
	e := evm[0]
	if got := string(e.Field("xattrnames").Name); got != "security.selinux|security.ima" {
		t.Errorf("xattrnames = %q", got)
	}
	if l := e.Field("xattrlengths").Lengths; len(l) != 2 || l[0] != 37 || l[1] != 34 {
		t.Errorf("xattrlengths = %v, want [37 34]", l)
	}
	if n := len(e.Field("xattrvalues").Data); n != 71 {
		t.Errorf("xattrvalues is %d bytes, want 71", n)
	}
	if e.Field("iuid").Uint != 0 || e.Field("igid").Uint != 0 || len(e.Field("iuid").Data) != 4 {
		t.Errorf("iuid/igid = %+v %+v", e.Field("iuid"), e.Field("igid"))
	}
	if mode := e.Field("imode").Uint; mode != 0o100644 {
		t.Errorf("imode = %o, want 100644", mode)
	}
}

func TestParseTemplateUnknownName(t *testing.T) {
	data := mustHex(t, "28000000 7368613235363a00 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 03000000 2f6100")
	for _, name := range []string{"ima-dep-cgn", "ima-cgpath", "ima-ns", "not-ima"} {
		e := &Entry{TemplateName: name, TemplateData: data, TemplateDigest: mustHex(t, "da451298750d9fe6b3509ddde65c11a99212e60a")}
		tmpl, err := e.ParseTemplate()
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !tmpl.Unknown || len(tmpl.Fields) != 2 || len(tmpl.Fields[0].Data) != 40 {
			t.Errorf("%s: generic framing gave %+v", name, tmpl)
		}
		// The hash never depends on knowing the fields.
		if _, err := e.VerifyTemplateHash(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := TemplateFields("d-ng|bogus"); !errors.Is(err, ErrUnknownTemplate) {
		t.Errorf("TemplateFields(d-ng|bogus) = %v", err)
	}
}

func TestDecodeDigestUnknownAlgorithm(t *testing.T) {
	field := append([]byte("unknown:\x00"), make([]byte, 29)...)
	d, problem := decodeDigest(field, false)
	if d.Algo != "unknown" || d.Alg != 0 || len(d.Digest) != 29 || problem == "" {
		t.Errorf("digest = %+v, problem %q", d, problem)
	}
	d, problem = decodeDigest([]byte("sha256:\x00abc"), false)
	if problem == "" || d.Alg != pcr.SHA256 {
		t.Errorf("short sha256 digest not reported: %+v %q", d, problem)
	}
}

func TestDecodeSignatureHeader(t *testing.T) {
	sig := append(mustHex(t, "030204 f3452d23 0100"), make([]byte, 256)...)
	s, problem := decodeSignature(sig)
	if problem != "" || s.Type != 3 || s.Version != 2 || s.HashAlgo != 4 || s.KeyID != 0xf3452d23 || s.SigSize != 256 {
		t.Errorf("signature = %+v, problem %q", s, problem)
	}

	// A size field in the wrong byte order is reported but the bytes stay.
	bad := append(mustHex(t, "030204 531f4025 4800"), make([]byte, 0x48)...)
	s, problem = decodeSignature(bad)
	if problem == "" || s == nil || s.SigSize != 0x4800 {
		t.Errorf("corrupted size: %+v, problem %q", s, problem)
	}
	if hex.EncodeToString(bad[:3]) != "030204" {
		t.Error("decode changed the input")
	}
}
