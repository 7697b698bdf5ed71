package tpm

import (
	"crypto"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// NV indexes where the TPM manufacturer stores the EK certificate (TCG EK
// Credential Profile, low range).
const (
	EKCertIndexRSA = 0x01c00002
	EKCertIndexECC = 0x01c0000a
)

// EK is the endorsement key's public part and its certificate.
type EK struct {
	Alg       string // "rsa" (RSA-2048) or "ecc" (NIST P-256)
	Public    []byte // marshaled TPM2B_PUBLIC
	PublicKey crypto.PublicKey
	// Certificate is the DER certificate from the EK certificate NV index,
	// or nil when the TPM has none there (swtpm without swtpm_setup
	// --create-ek-cert, for one).
	Certificate []byte
	CertIndex   uint32
}

// ReadEK derives the EK of the given algorithm ("rsa" or "ecc") from the
// TCG default EK template, which is the key the manufacturer's certificate
// names, and reads the certificate from NV when present.
func (t *TPM) ReadEK(alg string) (*EK, error) {
	template, index := tpm2.RSAEKTemplate, uint32(EKCertIndexRSA)
	switch alg {
	case "rsa":
	case "ecc":
		template, index = tpm2.ECCEKTemplate, EKCertIndexECC
	default:
		return nil, fmt.Errorf("unknown EK algorithm %q: use rsa or ecc", alg)
	}

	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
		InPublic:      tpm2.New2B(template),
	}.Execute(t.tpm)
	if err != nil {
		return nil, explain(fmt.Sprintf("deriving the %s EK with TPM2_CreatePrimary", alg), err)
	}
	if err := t.flush(rsp.ObjectHandle); err != nil {
		return nil, err
	}

	public := tpm2.Marshal(rsp.OutPublic)
	pub, err := parsePublicArea(public)
	if err != nil {
		return nil, fmt.Errorf("%s EK: %w", alg, err)
	}
	key, err := publicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("%s EK: %w", alg, err)
	}

	cert, err := t.readNV(index)
	if err != nil {
		return nil, fmt.Errorf("reading the %s EK certificate from NV index %#08x: %w", alg, index, err)
	}
	return &EK{Alg: alg, Public: public, PublicKey: key, Certificate: cert, CertIndex: index}, nil
}

// readNV reads a whole NV index with owner authorization. It returns nil
// and no error when the index is not defined.
func (t *TPM) readNV(index uint32) ([]byte, error) {
	pubRsp, err := tpm2.NVReadPublic{NVIndex: tpm2.TPMHandle(index)}.Execute(t.tpm)
	if errors.Is(err, tpm2.TPMRCHandle) {
		return nil, nil
	}
	if err != nil {
		return nil, explain("TPM2_NV_ReadPublic", err)
	}
	nvPublic, err := pubRsp.NVPublic.Contents()
	if err != nil {
		return nil, fmt.Errorf("TPM2_NV_ReadPublic: %w", err)
	}

	chunk, err := t.nvBufferMax()
	if err != nil {
		return nil, err
	}
	size := int(nvPublic.DataSize)
	data := make([]byte, 0, size)
	for len(data) < size {
		n := min(chunk, size-len(data))
		rsp, err := tpm2.NVRead{
			AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
			NVIndex:    tpm2.NamedHandle{Handle: tpm2.TPMHandle(index), Name: pubRsp.NVName},
			Size:       uint16(n),
			Offset:     uint16(len(data)),
		}.Execute(t.tpm)
		if err != nil {
			return nil, explain(fmt.Sprintf("TPM2_NV_Read at offset %d", len(data)), err)
		}
		if len(rsp.Data.Buffer) == 0 {
			return nil, fmt.Errorf("TPM2_NV_Read at offset %d returned no data", len(data))
		}
		data = append(data, rsp.Data.Buffer...)
	}
	return data[:size], nil
}

// nvBufferMax returns TPM_PT_NV_BUFFER_MAX, the largest TPM2_NV_Read size.
func (t *TPM) nvBufferMax() (int, error) {
	rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapTPMProperties, Property: uint32(tpm2.TPMPTNVBufferMax), PropertyCount: 1}.Execute(t.tpm)
	if err != nil {
		return 0, explain("TPM2_GetCapability(TPM_PT_NV_BUFFER_MAX)", err)
	}
	props, err := rsp.CapabilityData.Data.TPMProperties()
	if err != nil {
		return 0, fmt.Errorf("TPM2_GetCapability(TPM_PT_NV_BUFFER_MAX): %w", err)
	}
	for _, p := range props.TPMProperty {
		if p.Property == tpm2.TPMPTNVBufferMax && p.Value > 0 {
			return int(p.Value), nil
		}
	}
	// 512 bytes is below every TPM's NV buffer, so it works when the
	// property is missing.
	return 512, nil
}
