package webhook

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// SecretPrefix starts every signing secret in the Standard Webhooks format,
// "whsec_" followed by the standard base64 of the key bytes.
const SecretPrefix = "whsec_"

// Key lengths of a signing secret. The Standard Webhooks specification
// recommends 24 to 64 random bytes.
const (
	minSecretBytes = 24
	maxSecretBytes = 64
	newSecretBytes = 32
)

// sealVersion is the first byte of every sealed value, so the format can
// change later without guessing.
const sealVersion byte = 1

// ErrInvalidSecret is wrapped by errors about a malformed signing secret.
var ErrInvalidSecret = errors.New("invalid webhook signing secret")

// Secret is one signing secret of a subscription.
type Secret struct {
	// CreatedAt is when the secret was added.
	CreatedAt time.Time `json:"created_at"`

	// ExpiresAt is when the secret stops signing, or zero for never. A
	// rotation sets it on the old secret.
	ExpiresAt time.Time `json:"expires_at,omitzero"`

	// Value is the secret in "whsec_<base64>" form.
	Value string `json:"value"`
}

// ActiveAt reports whether the secret signs requests at t.
func (s Secret) ActiveAt(t time.Time) bool { return s.ExpiresAt.IsZero() || t.Before(s.ExpiresAt) }

// Fingerprint returns the first 16 hex digits of the SHA-256 of the secret,
// which identifies it in the audit ledger and in listings without revealing
// it.
func (s Secret) Fingerprint() string {
	sum := sha256.Sum256([]byte(s.Value))
	return hex.EncodeToString(sum[:8])
}

// NewSecret returns a new random signing secret in "whsec_<base64>" form.
func NewSecret() (string, error) {
	key := make([]byte, newSecretBytes)
	if _, err := rand.Read(key); err != nil {
		return "", fmt.Errorf("generate webhook secret: %w", err)
	}
	return SecretPrefix + base64.StdEncoding.EncodeToString(key), nil
}

// ParseSecret checks a "whsec_<base64>" secret and returns its key bytes.
func ParseSecret(secret string) ([]byte, error) {
	encoded, ok := strings.CutPrefix(secret, SecretPrefix)
	if !ok {
		return nil, fmt.Errorf("%w: it must start with %q", ErrInvalidSecret, SecretPrefix)
	}
	key, err := base64.StdEncoding.DecodeString(encoded)
	if err != nil {
		return nil, fmt.Errorf("%w: the part after %q is not standard base64", ErrInvalidSecret, SecretPrefix)
	}
	if len(key) < minSecretBytes || len(key) > maxSecretBytes {
		return nil, fmt.Errorf("%w: the key is %d bytes, want %d to %d", ErrInvalidSecret, len(key), minSecretBytes, maxSecretBytes)
	}
	return key, nil
}

// SecretBox encrypts and decrypts subscriptions' signing secrets with
// AES-256-GCM. Each sealed value is bound to its subscription id as
// additional data, so ciphertext copied to another row does not decrypt.
type SecretBox struct {
	aead cipher.AEAD
}

// NewSecretBox returns a SecretBox for a 32-byte key.
func NewSecretBox(key []byte) (*SecretBox, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("webhook secret key is %d bytes, want 32 (AES-256)", len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("create AES cipher: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("create AES-GCM: %w", err)
	}
	return &SecretBox{aead: aead}, nil
}

// ParseSecretKey decodes a base64 (standard or URL alphabet, padded or not)
// 32-byte key, the format of WEBHOOK_SECRET_KEY, and returns its SecretBox.
func ParseSecretKey(encoded string) (*SecretBox, error) {
	encoded = strings.TrimSpace(encoded)
	var key []byte
	var err error
	for _, encoding := range []*base64.Encoding{
		base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding,
	} {
		if key, err = encoding.DecodeString(encoded); err == nil {
			break
		}
	}
	if err != nil {
		return nil, errors.New("webhook secret key is not base64; generate one with `openssl rand -base64 32`")
	}
	return NewSecretBox(key)
}

// seal encrypts secrets for the subscription subscriptionID.
func (b *SecretBox) seal(subscriptionID string, secrets []Secret) ([]byte, error) {
	plaintext, err := json.Marshal(secrets)
	if err != nil {
		return nil, fmt.Errorf("encode secrets: %w", err)
	}
	nonce := make([]byte, b.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("generate nonce: %w", err)
	}
	out := append([]byte{sealVersion}, nonce...)
	return b.aead.Seal(out, nonce, plaintext, []byte(subscriptionID)), nil
}

// open decrypts the secrets sealed for the subscription subscriptionID.
func (b *SecretBox) open(subscriptionID string, sealed []byte) ([]Secret, error) {
	nonceSize := b.aead.NonceSize()
	if len(sealed) < 1+nonceSize+b.aead.Overhead() || sealed[0] != sealVersion {
		return nil, fmt.Errorf("secrets of subscription %s are not in sealed format version %d", subscriptionID, sealVersion)
	}
	nonce := sealed[1 : 1+nonceSize]
	plaintext, err := b.aead.Open(nil, nonce, sealed[1+nonceSize:], []byte(subscriptionID))
	if err != nil {
		return nil, fmt.Errorf("decrypt secrets of subscription %s: wrong WEBHOOK_SECRET_KEY or altered data", subscriptionID)
	}
	var secrets []Secret
	if err := json.Unmarshal(plaintext, &secrets); err != nil {
		return nil, fmt.Errorf("decode secrets of subscription %s: %w", subscriptionID, err)
	}
	return secrets, nil
}
