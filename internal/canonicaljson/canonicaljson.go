// Package canonicaljson produces one byte form per JSON value, so equal
// values hash equally wherever they were stored: object keys sorted by their
// UTF-8 bytes, no insignificant whitespace, numbers exactly as written, and
// no HTML escaping.
package canonicaljson

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
)

// Marshal returns the canonical form of the JSON document data.
func Marshal(data []byte) ([]byte, error) {
	decoder := json.NewDecoder(bytes.NewReader(data))
	decoder.UseNumber()
	var value any
	if err := decoder.Decode(&value); err != nil {
		return nil, fmt.Errorf("canonicalize JSON: %w", err)
	}
	var out bytes.Buffer
	encoder := json.NewEncoder(&out)
	encoder.SetEscapeHTML(false)
	// encoding/json writes map keys in sorted order.
	if err := encoder.Encode(value); err != nil {
		return nil, fmt.Errorf("canonicalize JSON: %w", err)
	}
	return bytes.TrimSuffix(out.Bytes(), []byte("\n")), nil
}

// SHA256 returns the lowercase hex SHA-256 of data.
func SHA256(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}
