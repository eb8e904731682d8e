package ofbfake

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"time"
)

// certificateAuthority is the fake's in-memory CA. It signs the server
// certificate and the client transport certificates.
type certificateAuthority struct {
	cert    *x509.Certificate
	certPEM []byte
	key     *ecdsa.PrivateKey
	pool    *x509.CertPool
}

func newCertificateAuthority() (*certificateAuthority, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate fake PCM CA key: %w", err)
	}
	template := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "Fake PCM test CA", Organization: []string{"eventruntime tests"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create fake PCM CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse fake PCM CA certificate: %w", err)
	}

	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &certificateAuthority{
		cert:    cert,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		key:     key,
		pool:    pool,
	}, nil
}

// issue signs a leaf certificate and returns it with its PEM encodings.
func (ca *certificateAuthority) issue(template *x509.Certificate) (tls.Certificate, []byte, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, nil, fmt.Errorf("generate key: %w", err)
	}
	template.SerialNumber = randomSerial()
	template.NotBefore = time.Now().Add(-time.Hour)
	template.NotAfter = time.Now().Add(24 * time.Hour)
	template.KeyUsage = x509.KeyUsageDigitalSignature

	der, err := x509.CreateCertificate(rand.Reader, template, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return tls.Certificate{}, nil, nil, fmt.Errorf("create certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return tls.Certificate{}, nil, nil, fmt.Errorf("encode key: %w", err)
	}

	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, nil, nil, fmt.Errorf("load key pair: %w", err)
	}
	return pair, certPEM, keyPEM, nil
}

// serverCertificate issues the TLS certificate for 127.0.0.1, ::1 and
// localhost.
func (ca *certificateAuthority) serverCertificate() (tls.Certificate, error) {
	pair, _, _, err := ca.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "localhost"},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("issue fake PCM server certificate: %w", err)
	}
	return pair, nil
}

func randomSerial() *big.Int {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		// The error can only come from reading crypto/rand.Reader.
		panic(err)
	}
	return serial
}

// IssueClientCertificate issues a transport certificate for an organisation,
// signed by the fake's CA. The organisation id is the subject's first
// organizational unit, where the token endpoints read it. It returns the key
// pair and its PEM encodings.
func (s *Server) IssueClientCertificate(orgID string) (tls.Certificate, []byte, []byte, error) {
	if orgID == "" {
		return tls.Certificate{}, nil, nil, fmt.Errorf("issue fake PCM client certificate: missing organisation id")
	}
	pair, certPEM, keyPEM, err := s.ca.issue(&x509.Certificate{
		Subject: pkix.Name{
			CommonName:         "transport " + orgID,
			Country:            []string{"BR"},
			Organization:       []string{"Fake participant"},
			OrganizationalUnit: []string{orgID},
		},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return tls.Certificate{}, nil, nil, fmt.Errorf("issue fake PCM client certificate for %q: %w", orgID, err)
	}
	return pair, certPEM, keyPEM, nil
}

// CACertPEM returns the PEM certificate of the fake's CA, which signs the
// server certificate and the client certificates.
func (s *Server) CACertPEM() []byte { return append([]byte(nil), s.ca.certPEM...) }

// RootCAs returns a pool that contains only the fake's CA.
func (s *Server) RootCAs() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(s.ca.cert)
	return pool
}
