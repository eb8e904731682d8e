package opin

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/go-jose/go-jose/v4"
)

// MinKeyBits is the smallest RSA signing key ParseSigningKey accepts, the
// minimum of RFC 7518 section 3.5 for PS256.
const MinKeyBits = 2048

// ParseSigningKey parses a PEM-encoded RSA private key, in PKCS #1
// ("RSA PRIVATE KEY") or PKCS #8 ("PRIVATE KEY") form, of at least
// MinKeyBits. Errors never include key material.
func ParseSigningKey(pemData []byte) (*rsa.PrivateKey, error) {
	block, _ := pem.Decode(pemData)
	if block == nil {
		return nil, errors.New("signing key is not PEM-encoded")
	}

	var key *rsa.PrivateKey
	switch block.Type {
	case "RSA PRIVATE KEY":
		parsed, err := x509.ParsePKCS1PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse PKCS #1 signing key: %w", err)
		}
		key = parsed
	case "PRIVATE KEY":
		parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse PKCS #8 signing key: %w", err)
		}
		rsaKey, ok := parsed.(*rsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("signing key is a %T, want an RSA key for PS256", parsed)
		}
		key = rsaKey
	default:
		return nil, fmt.Errorf("signing key PEM block is %q, want RSA PRIVATE KEY or PRIVATE KEY", block.Type)
	}

	if bits := key.N.BitLen(); bits < MinKeyBits {
		return nil, fmt.Errorf("signing key has %d bits, want at least %d", bits, MinKeyBits)
	}
	return key, nil
}

// Signer signs request bodies as compact JWS with PS256, the protected header
// holding alg PS256, kid and typ JWT. It uses go-jose, which signs PS256 with
// a salt as long as the SHA-256 hash (32 bytes), as RFC 7518 section 3.5
// requires. A Signer is safe for concurrent use.
type Signer struct {
	keyID  string
	signer jose.Signer
}

// NewSigner returns a Signer for key, whose registered key id is keyID.
func NewSigner(key *rsa.PrivateKey, keyID string) (*Signer, error) {
	if key == nil {
		return nil, errors.New("missing signing key")
	}
	if keyID == "" {
		return nil, errors.New("missing signing key id (kid)")
	}
	signingKey := jose.SigningKey{Algorithm: jose.PS256, Key: jose.JSONWebKey{Key: key, KeyID: keyID}}
	signer, err := jose.NewSigner(signingKey, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return nil, fmt.Errorf("build PS256 signer for kid %q: %w", keyID, err)
	}
	return &Signer{keyID: keyID, signer: signer}, nil
}

// KeyID returns the kid the Signer puts in each header.
func (s *Signer) KeyID() string { return s.keyID }

// Sign returns the compact serialization of a JWS over payload. PS256
// signatures are randomized, so two calls over one payload differ.
func (s *Signer) Sign(payload []byte) (string, error) {
	object, err := s.signer.Sign(payload)
	if err != nil {
		return "", fmt.Errorf("sign request body with kid %q: %w", s.keyID, err)
	}
	compact, err := object.CompactSerialize()
	if err != nil {
		return "", fmt.Errorf("serialize JWS with kid %q: %w", s.keyID, err)
	}
	return compact, nil
}
