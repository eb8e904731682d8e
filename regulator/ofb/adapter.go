package ofb

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/regulator"
	"github.com/finnest/eventruntime/tenant"
)

// AdapterConfig configures an Adapter.
type AdapterConfig struct {
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

// Adapter is the Open Finance Brasil regulator.Adapter. It keeps one Client
// per tenant, rebuilt when the tenant's configuration changes, so each
// tenant's token comes from its own transport certificate.
type Adapter struct {
	allowlist *Allowlist
	cfg       AdapterConfig
	mu        sync.Mutex
	clients   map[string]*tenantClient
}

type tenantClient struct {
	client    *Client
	updatedAt time.Time
}

// NewAdapter returns an Adapter. URLs are checked when a tenant's first
// client is built, so a service without OFB tenants needs none.
func NewAdapter(cfg AdapterConfig) (*Adapter, error) {
	return &Adapter{allowlist: PrivateReportsAllowlist(), cfg: cfg, clients: map[string]*tenantClient{}}, nil
}

// Map implements regulator.Adapter with NewReport.
func (r *Adapter) Map(in outbox.Interaction) (json.RawMessage, error) {
	report, err := NewReport(in)
	if err != nil {
		return nil, err
	}
	return json.Marshal(report)
}

// Check implements regulator.Adapter: the item must decode, name an
// allow-listed endpoint, and have a timestamp within the PCM's window.
func (r *Adapter) Check(item json.RawMessage, now time.Time) error {
	var report Report
	if err := json.Unmarshal(item, &report); err != nil {
		return fmt.Errorf("%w: stored item does not decode: %w", ErrInvalidReport, err)
	}
	if !r.allowlist.Contains(report.Endpoint) {
		return fmt.Errorf("%w: endpoint %q is not on the PCM allow-list", ErrInvalidReport, report.Endpoint)
	}
	if report.ProcessTimespan <= 0 {
		return fmt.Errorf("%w: processTimespan %d must be positive", ErrInvalidReport, report.ProcessTimespan)
	}
	return CheckReport(report, now)
}

// Lookup implements regulator.Adapter with GetReport.
func (r *Adapter) Lookup(ctx context.Context, config *tenant.Config, item json.RawMessage) (bool, string, error) {
	var report Report
	if err := json.Unmarshal(item, &report); err != nil {
		return false, "", fmt.Errorf("%w: stored item does not decode: %w", ErrInvalidReport, err)
	}
	if report.FAPIInteractionID == "" {
		// A CLIENT report of a failed call may omit the id, and the PCM
		// can only be asked by id: such an item counts as not found and is
		// sent again.
		return false, "", nil
	}
	client, err := r.client(config)
	if err != nil {
		return false, "", err
	}
	found, body, err := client.GetReport(ctx, report.FAPIInteractionID)
	if err != nil || !found {
		return false, "", convertError(err)
	}
	// The PCM may respond with the counterpart's report of the same
	// interaction; only a report in this item's role is this item.
	var stored struct {
		ReportID string `json:"reportId"`
		Role     string `json:"role"`
	}
	if err := json.Unmarshal(body, &stored); err != nil {
		return false, "", fmt.Errorf("decode read-back of interaction %q: %w", report.FAPIInteractionID, err)
	}
	if stored.Role != report.Role {
		return false, "", nil
	}
	return true, stored.ReportID, nil
}

// convertError turns a *StatusError into the shared *regulator.StatusError.
func convertError(err error) error {
	if statusErr, ok := err.(*StatusError); ok {
		return &regulator.StatusError{
			Message: statusErr.Message, RetryAfter: statusErr.RetryAfter, StatusCode: statusErr.StatusCode,
		}
	}
	return err
}

// Report implements regulator.Adapter with PostEncodedReports.
func (r *Adapter) Report(ctx context.Context, config *tenant.Config, items []json.RawMessage) (*regulator.Result, error) {
	client, err := r.client(config)
	if err != nil {
		return nil, err
	}
	result, err := client.PostEncodedReports(ctx, items)
	if err != nil {
		return nil, convertError(err)
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
func (r *Adapter) client(config *tenant.Config) (*Client, error) {
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
