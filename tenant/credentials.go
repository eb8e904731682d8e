package tenant

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// ErrCredentialMissing is returned when a tenant has no reference for a
// credential it needs.
var ErrCredentialMissing = errors.New("credential reference missing")

// ResolveCredential returns the secret a reference points to: "file:/path"
// reads the file and "env:NAME" reads the environment variable. The error
// names the reference, never the secret.
func ResolveCredential(reference string) ([]byte, error) {
	kind, target, ok := strings.Cut(reference, ":")
	if !ok || target == "" {
		return nil, fmt.Errorf("credential reference %q is invalid: want file:/path or env:NAME", reference)
	}
	switch kind {
	case "file":
		data, err := os.ReadFile(target)
		if err != nil {
			return nil, fmt.Errorf("read credential file %s: %w", target, err)
		}
		return data, nil
	case "env":
		value, ok := os.LookupEnv(target)
		if !ok || value == "" {
			return nil, fmt.Errorf("credential environment variable %s is not set", target)
		}
		return []byte(value), nil
	default:
		return nil, fmt.Errorf("credential reference %q has unknown kind %q: want file or env", reference, kind)
	}
}

// Credential resolves the tenant's credential called name.
func (c *Config) Credential(name string) ([]byte, error) {
	reference, ok := c.Credentials[name]
	if !ok || reference == "" {
		return nil, fmt.Errorf("%w: tenant %s (%s) has no %q reference", ErrCredentialMissing, c.TenantID, c.Ecosystem, name)
	}
	return ResolveCredential(reference)
}
