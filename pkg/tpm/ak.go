package tpm

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"

	"github.com/imashard/imashard/pkg/pcr"
)

// AKOptions selects the attestation key.
type AKOptions struct {
	// Alg is "ecc" (the default: NIST P-256 with ECDSA-SHA256) or "rsa"
	// (RSA-2048 with RSASSA-SHA256). It selects the template of the derived
	// primary key and is ignored when Handle is set.
	Alg string
	// Handle is a persistent key handle (0x81xxxxxx) of an existing
	// restricted signing key. 0 means derive the primary key from the
	// template, which needs nothing stored on the TPM or on disk.
	Handle uint32
}

// AK is a loaded attestation key.
type AK struct {
	Public    []byte // marshaled TPM2B_PUBLIC
	Name      []byte // TPM2B_NAME contents: nameAlg || digest of TPMT_PUBLIC
	PublicKey crypto.PublicKey

	handle     tpm2.TPMHandle
	persistent bool
	scheme     tpm2.TPMTSigScheme // used when the key's own scheme is TPM_ALG_NULL
}

// akAttributes are the objectAttributes of the derived AK: fixedTPM,
// fixedParent, sensitiveDataOrigin, userWithAuth, noDA, restricted and sign
// (0x00050472). restricted makes the TPM refuse to sign data that starts
// with TPM_GENERATED_VALUE unless the TPM produced it, which is what makes a
// quote trustworthy. noDA keeps the empty-password key out of
// dictionary-attack lockout.
var akAttributes = tpm2.TPMAObject{
	FixedTPM:            true,
	FixedParent:         true,
	SensitiveDataOrigin: true,
	UserWithAuth:        true,
	NoDA:                true,
	Restricted:          true,
	SignEncrypt:         true,
}

// AKTemplate returns the TPMT_PUBLIC template of the derived AK for alg
// ("ecc" or "rsa"). docs/attestation-key.md lists every field so other tools
// can derive the same key.
func AKTemplate(alg string) (tpm2.TPMTPublic, error) {
	switch alg {
	case "", "ecc":
		return tpm2.TPMTPublic{
			Type:             tpm2.TPMAlgECC,
			NameAlg:          tpm2.TPMAlgSHA256,
			ObjectAttributes: akAttributes,
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
				Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
				Scheme: tpm2.TPMTECCScheme{
					Scheme:  tpm2.TPMAlgECDSA,
					Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
				},
				CurveID: tpm2.TPMECCNistP256,
				KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
			}),
			Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
		}, nil
	case "rsa":
		return tpm2.TPMTPublic{
			Type:             tpm2.TPMAlgRSA,
			NameAlg:          tpm2.TPMAlgSHA256,
			ObjectAttributes: akAttributes,
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
				Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
				Scheme: tpm2.TPMTRSAScheme{
					Scheme:  tpm2.TPMAlgRSASSA,
					Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgRSASSA, &tpm2.TPMSSigSchemeRSASSA{HashAlg: tpm2.TPMAlgSHA256}),
				},
				KeyBits:  2048,
				Exponent: 0,
			}),
			Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{}),
		}, nil
	}
	return tpm2.TPMTPublic{}, fmt.Errorf("unknown AK algorithm %q: use ecc or rsa", alg)
}

// LoadAK derives the primary AK under the endorsement hierarchy from the
// fixed template, or loads the persistent key opts.Handle. The same TPM
// yields the same derived key every time, across reboots and kexec, until
// the endorsement primary seed changes (TPM2_Clear does not change it,
// TPM2_ChangeEPS does). Release a derived key with FlushAK.
func (t *TPM) LoadAK(opts AKOptions) (*AK, error) {
	if opts.Handle != 0 {
		return t.loadPersistentAK(opts.Handle)
	}

	template, err := AKTemplate(opts.Alg)
	if err != nil {
		return nil, err
	}
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
		InPublic:      tpm2.New2B(template),
	}.Execute(t.tpm)
	if err != nil {
		return nil, explain(fmt.Sprintf("deriving the %s AK with TPM2_CreatePrimary under the endorsement hierarchy", akAlgName(opts.Alg)), err)
	}

	ak, err := newAK(tpm2.Marshal(rsp.OutPublic), rsp.ObjectHandle, false)
	if err != nil {
		flushErr := t.flush(rsp.ObjectHandle)
		return nil, errors.Join(fmt.Errorf("TPM2_CreatePrimary returned an unusable AK: %w", err), flushErr)
	}
	t.loaded[ak.handle] = true
	return ak, nil
}

func akAlgName(alg string) string {
	if alg == "" {
		return "ecc"
	}
	return alg
}

func (t *TPM) loadPersistentAK(handle uint32) (*AK, error) {
	if handle>>24 != 0x81 {
		return nil, fmt.Errorf("AK handle %#08x is not a persistent handle: persistent handles are 0x81000000 to 0x81ffffff", handle)
	}
	rsp, err := tpm2.ReadPublic{ObjectHandle: tpm2.TPMHandle(handle)}.Execute(t.tpm)
	if err != nil {
		return nil, explain(fmt.Sprintf("reading persistent AK %#08x (create one with tpm2_createak and tpm2_evictcontrol, or omit the handle to derive the primary AK)", handle), err)
	}
	ak, err := newAK(tpm2.Marshal(rsp.OutPublic), tpm2.TPMHandle(handle), true)
	if err != nil {
		return nil, fmt.Errorf("persistent key %#08x: %w", handle, err)
	}
	return ak, nil
}

func newAK(public []byte, handle tpm2.TPMHandle, persistent bool) (*AK, error) {
	key, name, err := ParseAKPublic(public)
	if err != nil {
		return nil, err
	}
	ak := &AK{Public: public, Name: name, PublicKey: key, handle: handle, persistent: persistent}

	// A restricted key may leave its scheme TPM_ALG_NULL, and then
	// TPM2_Quote needs one in inScheme.
	ak.scheme = tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull}
	pub, _ := parsePublicArea(public)
	if keyScheme(pub) == tpm2.TPMAlgNull {
		switch key.(type) {
		case *ecdsa.PublicKey:
			ak.scheme = tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgECDSA, Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256})}
		case *rsa.PublicKey:
			ak.scheme = tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgRSASSA, Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgRSASSA, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256})}
		}
	}
	return ak, nil
}

func keyScheme(pub *tpm2.TPMTPublic) tpm2.TPMAlgID {
	if pub == nil {
		return tpm2.TPMAlgNull
	}
	if d, err := pub.Parameters.ECCDetail(); err == nil && pub.Type == tpm2.TPMAlgECC {
		return d.Scheme.Scheme
	}
	if d, err := pub.Parameters.RSADetail(); err == nil && pub.Type == tpm2.TPMAlgRSA {
		return d.Scheme.Scheme
	}
	return tpm2.TPMAlgNull
}

// FlushAK unloads a derived AK with TPM2_FlushContext. It does nothing for
// a persistent key, which stays in the TPM.
func (t *TPM) FlushAK(ak *AK) error {
	if ak == nil || ak.persistent || ak.handle == 0 {
		return nil
	}
	err := t.flush(ak.handle)
	delete(t.loaded, ak.handle)
	ak.handle = 0
	return err
}

func (t *TPM) flush(handle tpm2.TPMHandle) error {
	_, err := tpm2.FlushContext{FlushHandle: handle}.Execute(t.tpm)
	return explain(fmt.Sprintf("TPM2_FlushContext of transient object %#08x", uint32(handle)), err)
}

// parsePublicArea decodes a marshaled TPM2B_PUBLIC that must be exactly
// the given bytes. go-tpm's decoder is not hardened against hostile input,
// so a panic in it becomes an error.
func parsePublicArea(tpm2bPublic []byte) (pub *tpm2.TPMTPublic, err error) {
	if len(tpm2bPublic) < 2 {
		return nil, fmt.Errorf("%w: TPM2B_PUBLIC has %d bytes, need at least 2", ErrMalformedPublic, len(tpm2bPublic))
	}
	size := int(binary.BigEndian.Uint16(tpm2bPublic))
	if size != len(tpm2bPublic)-2 {
		return nil, fmt.Errorf("%w: TPM2B_PUBLIC size field is %d but %d bytes follow it", ErrMalformedPublic, size, len(tpm2bPublic)-2)
	}

	defer func() {
		if r := recover(); r != nil {
			pub, err = nil, fmt.Errorf("%w: decoding TPMT_PUBLIC: %v", ErrMalformedPublic, r)
		}
	}()
	pub, err = tpm2.Unmarshal[tpm2.TPMTPublic](tpm2bPublic[2:])
	if err != nil {
		return nil, fmt.Errorf("%w: decoding TPMT_PUBLIC: %v", ErrMalformedPublic, err)
	}
	if !bytes.Equal(tpm2.Marshal(*pub), tpm2bPublic[2:]) {
		return nil, fmt.Errorf("%w: TPMT_PUBLIC has trailing or non-canonical bytes", ErrMalformedPublic)
	}
	return pub, nil
}

// ErrMalformedPublic reports a TPM2B_PUBLIC that cannot be decoded.
var ErrMalformedPublic = errors.New("malformed TPM2B_PUBLIC")

// ParseAKPublic decodes a marshaled TPM2B_PUBLIC of an attestation key and
// returns its public key (*ecdsa.PublicKey or *rsa.PublicKey) and its name
// (nameAlg || hash of the TPMT_PUBLIC bytes). It rejects keys that are not
// fixedTPM restricted signing keys, because only those keys prove that the
// TPM produced what they sign.
func ParseAKPublic(tpm2bPublic []byte) (crypto.PublicKey, []byte, error) {
	pub, err := parsePublicArea(tpm2bPublic)
	if err != nil {
		return nil, nil, err
	}

	attrs := pub.ObjectAttributes
	if !attrs.SignEncrypt || !attrs.Restricted || attrs.Decrypt || !attrs.FixedTPM {
		return nil, nil, fmt.Errorf("%w: objectAttributes sign=%t restricted=%t decrypt=%t fixedTPM=%t, need sign, restricted and fixedTPM without decrypt", ErrNotAK, attrs.SignEncrypt, attrs.Restricted, attrs.Decrypt, attrs.FixedTPM)
	}

	key, err := publicKey(pub)
	if err != nil {
		return nil, nil, err
	}

	nameAlg := pcr.Alg(pub.NameAlg)
	h, err := nameAlg.New()
	if err != nil {
		return nil, nil, fmt.Errorf("%w: nameAlg %s: %v", ErrMalformedPublic, nameAlg, err)
	}
	h.Write(tpm2bPublic[2:])
	name := binary.BigEndian.AppendUint16(nil, uint16(nameAlg))
	name = h.Sum(name)
	return key, name, nil
}

func publicKey(pub *tpm2.TPMTPublic) (key crypto.PublicKey, err error) {
	defer func() {
		if r := recover(); r != nil {
			key, err = nil, fmt.Errorf("%w: converting the public key: %v", ErrMalformedPublic, r)
		}
	}()
	key, err = tpm2.Pub(*pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedPublic, err)
	}
	if k, ok := key.(*rsa.PublicKey); ok && (k.N.BitLen() < 2048 || k.E < 3) {
		return nil, fmt.Errorf("%w: RSA key of %d bits with exponent %d: need at least 2048 bits", ErrMalformedPublic, k.N.BitLen(), k.E)
	}
	return key, nil
}
