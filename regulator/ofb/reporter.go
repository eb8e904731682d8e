package ofb

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/finnest/eventruntime/regulator"
	"github.com/finnest/eventruntime/tenant"
)

// ReporterConfig configures a Reporter.
type ReporterConfig struct {
	// BaseURL is the PCM report API's scheme and host.
	BaseURL string

	// RootCAs verifies the PCM's server certificates. Nil means the system
	// roots.
	RootCAs *x509.CertPool

	// Timeout bounds each request. Zero means DefaultTimeout.
	Timeout time.Duration

	// TokenURL is the PCM authorisation server's scheme and host.
	TokenURL string
}

// Reporter is the OFB adapter behind regulator.Reporter. It keeps one Client
// per tenant, rebuilt when the tenant's configuration changes, so each
// tenant's token comes from its own transport certificate.
type Reporter struct {
	cfg     ReporterConfig
	mu      sync.Mutex
	clients map[string]*tenantClient
}

type tenantClient struct {
	client    *Client
	updatedAt time.Time
}

// NewReporter returns a Reporter. URLs are checked when a tenant's first
// client is built, so a service without OFB tenants needs none.
func NewReporter(cfg ReporterConfig) (*Reporter, error) {
	return &Reporter{cfg: cfg, clients: map[string]*tenantClient{}}, nil
}

// Report implements regulator.Reporter.
func (r *Reporter) Report(ctx context.Context, config *tenant.Config, items []json.RawMessage) (*regulator.Result, error) {
	client, err := r.client(config)
	if err != nil {
		return nil, err
	}
	result, err := client.PostEncodedReports(ctx, items)
	if statusErr, ok := err.(*StatusError); ok {
		return nil, &regulator.StatusError{
			Message: statusErr.Message, RetryAfter: statusErr.RetryAfter, StatusCode: statusErr.StatusCode,
		}
	}
	if err != nil {
		return nil, err
	}
	out := &regulator.Result{RequestBody: result.RequestBody, StatusCode: result.StatusCode,
		Items: make([]regulator.ItemResult, len(result.Items))}
	for i, item := range result.Items {
		out.Items[i] = regulator.ItemResult{
			CorrelationID: item.CorrelationID, Message: item.Message, ReportID: item.ReportID, Status: item.Status,
		}
	}
	return out, nil
}

// client returns the tenant's client, building it from the tenant's
// credential references when missing or stale.
func (r *Reporter) client(config *tenant.Config) (*Client, error) {
	key := config.TenantID
	r.mu.Lock()
	defer r.mu.Unlock()
	if cached, ok := r.clients[key]; ok && cached.updatedAt.Equal(config.UpdatedAt) {
		return cached.client, nil
	}

	certPEM, err := config.Credential("certificate")
	if err != nil {
		return nil, err
	}
	keyPEM, err := config.Credential("private_key")
	if err != nil {
		return nil, err
	}
	certificate, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load transport certificate of tenant %s: %w", config.TenantID, err)
	}
	client, err := NewClient(Config{
		BaseURL:     r.cfg.BaseURL,
		Certificate: certificate,
		ClientID:    config.ClientID,
		RootCAs:     r.cfg.RootCAs,
		Timeout:     r.cfg.Timeout,
		TokenURL:    r.cfg.TokenURL,
	})
	if err != nil {
		return nil, fmt.Errorf("build PCM client of tenant %s: %w", config.TenantID, err)
	}
	r.clients[key] = &tenantClient{client: client, updatedAt: config.UpdatedAt}
	return client, nil
}
