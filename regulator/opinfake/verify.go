package opinfake

import (
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jws"
)

// verifiedRequest is a batch request whose JWS passed verification.
type verifiedRequest struct {
	key     registeredKey
	keyID   string
	payload []byte
}

// verify checks a compact JWS: a single signature whose protected header has
// alg PS256, typ JWT and a registered kid, a valid signature under that key,
// and a PSS salt as long as the SHA-256 hash. The error says which check
// failed and never includes key material.
func (s *Server) verify(compact []byte) (*verifiedRequest, error) {
	message, err := jws.Parse(compact, jws.WithCompact())
	if err != nil {
		return nil, fmt.Errorf("body is not a compact JWS: %w", err)
	}
	signatures := message.Signatures()
	if len(signatures) != 1 {
		return nil, fmt.Errorf("JWS has %d signatures, want 1", len(signatures))
	}
	header := signatures[0].ProtectedHeaders()
	if header == nil {
		return nil, errors.New("JWS has no protected header")
	}

	if alg, ok := header.Algorithm(); !ok || alg.String() != jwa.PS256().String() {
		return nil, fmt.Errorf("JWS alg is %q, want PS256", alg.String())
	}
	if typ, _ := header.Type(); typ != "JWT" {
		return nil, fmt.Errorf("JWS typ is %q, want JWT", typ)
	}
	keyID, _ := header.KeyID()
	if keyID == "" {
		return nil, errors.New("JWS header has no kid")
	}
	s.mu.Lock()
	key, ok := s.keys[keyID]
	s.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("kid %q is not registered", keyID)
	}

	payload, err := jws.Verify(compact, jws.WithKey(jwa.PS256(), key.public))
	if err != nil {
		return nil, fmt.Errorf("JWS signature does not verify with the key of kid %q: %w", keyID, err)
	}
	if err := verifySaltLength(compact, key.public); err != nil {
		return nil, fmt.Errorf("kid %q: %w", keyID, err)
	}
	return &verifiedRequest{key: key, keyID: keyID, payload: payload}, nil
}

// verifySaltLength accepts only a PSS salt of 32 bytes, the SHA-256 output
// size that RFC 7518 section 3.5 sets for PS256. jwx v3.4.0 (through
// lestrrat-go/dsig v1.4.0) already verifies PS256 with that fixed length,
// but go-jose v4.1.9 accepts any salt length, so this check keeps the rule
// whatever a later jwx version does.
func verifySaltLength(compact []byte, public *rsa.PublicKey) error {
	parts := strings.Split(string(compact), ".")
	if len(parts) != 3 {
		return fmt.Errorf("JWS has %d parts, want 3", len(parts))
	}
	signature, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return fmt.Errorf("JWS signature is not base64url: %w", err)
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	options := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}
	if err := rsa.VerifyPSS(public, crypto.SHA256, digest[:], signature, options); err != nil {
		return errors.New("PS256 signature salt is not 32 bytes long (RFC 7518 section 3.5)")
	}
	return nil
}
