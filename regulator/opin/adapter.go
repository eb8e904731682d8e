package opin

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/regulator"
	"github.com/finnest/eventruntime/tenant"
)

// SigningKeyCredential is the name of the tenant credential that refers to
// the organisation's PEM RSA signing key. tenant.Config.SigningKeyID is its
// kid.
const SigningKeyCredential = "signing_key"

// AdapterConfig configures an Adapter. Only BaseURL is required, and only
// once a tenant reports.
type AdapterConfig struct {
	// BaseURL is the ingestion API's https scheme and host, such as the
	// fake's URL in tests. There is no default, so a misconfigured service
	// never reaches the production platform. Empty makes Report fail.
	BaseURL string

	// Logger receives one debug line per request. Nil discards them.
	Logger *slog.Logger

	// RootCAs verifies the platform's server certificates. Nil means the
	// system roots.
	RootCAs *x509.CertPool

	// Timeout bounds each request, connection to last body byte. Zero means
	// DefaultTimeout.
	Timeout time.Duration
}

// Adapter is the Open Insurance Brasil regulator.Adapter. It signs each batch
// with the tenant's key and keeps one Signer per tenant, rebuilt when the
// tenant's configuration changes.
type Adapter struct {
	client *client
	logger *slog.Logger

	mu      sync.Mutex
	signers map[string]*tenantSigner
}

type tenantSigner struct {
	signer    *Signer
	updatedAt time.Time
}

// NewAdapter returns an Adapter. It fails when cfg.BaseURL is set but is not
// an https URL with a host.
func NewAdapter(cfg AdapterConfig) (*Adapter, error) {
	if cfg.BaseURL != "" {
		parsed, err := url.Parse(cfg.BaseURL)
		if err != nil || parsed.Scheme != "https" || parsed.Host == "" {
			return nil, fmt.Errorf("invalid OPIN BaseURL %q: want an https URL with a host", cfg.BaseURL)
		}
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	adapter := &Adapter{logger: logger, signers: map[string]*tenantSigner{}}
	if cfg.BaseURL != "" {
		adapter.client = newClient(cfg.BaseURL, cfg.RootCAs, cfg.Timeout)
	}
	return adapter, nil
}

// Map implements regulator.Adapter with NewItem. The item is an Item: the
// event and its role.
func (a *Adapter) Map(in outbox.Interaction) (json.RawMessage, error) {
	item, err := NewItem(in)
	if err != nil {
		return nil, err
	}
	return json.Marshal(item)
}

// Check implements regulator.Adapter: the item must decode and pass
// ValidateItem.
//
// NOTE: the ingestion spec states no time window for timestamps, so Check
// never returns regulator.ErrItemExpired and now is unused.
func (a *Adapter) Check(item json.RawMessage, now time.Time) error {
	var decoded Item
	if err := json.Unmarshal(item, &decoded); err != nil {
		return fmt.Errorf("%w: stored item does not decode: %w", ErrInvalidEvent, err)
	}
	return ValidateItem(decoded)
}

// Lookup implements regulator.Adapter. The ingestion spec has no read-back
// operation, so it always returns an error wrapping
// regulator.ErrLookupUnsupported.
func (a *Adapter) Lookup(context.Context, *tenant.Config, json.RawMessage) (bool, string, error) {
	return false, "", fmt.Errorf("OPIN ingestion API: %w", regulator.ErrLookupUnsupported)
}

// roleOrder is the order in which Report sends its requests.
var roleOrder = []string{RoleServer, RoleClient}

// Report implements regulator.Adapter. It splits items by role and sends one
// signed request per role, SERVER events to ServerBatchPath first, then
// CLIENT events to ClientBatchPath, each with the body
// {"organisationId": tenant's OrganisationID, "events": [...]}.
//
// Each batch response lists one result per event in request order, so the
// item results are those entries put back in the order of items. A 207
// entry has no reportId, so its ItemResult.ReportID is empty. StatusCode is
// 207 when any request got 207, and 200 otherwise.
//
// RequestBody is the JSON array of the request payloads in the order sent,
// each exactly the bytes that were signed. It holds no signature, because
// PS256 signatures are randomized and evidence must hash reproducibly.
//
// NOTE: when the SERVER request succeeds and the CLIENT request then fails,
// Report returns the error and the caller resends both. The spec says the
// platform detects duplicates by fapiInteractionId, correlationId,
// serverASId, clientSSId, timestamp and origin, but the real platform's
// answer to a duplicate was not observed.
func (a *Adapter) Report(ctx context.Context, config *tenant.Config, items []json.RawMessage) (*regulator.Result, error) {
	if len(items) == 0 {
		return nil, fmt.Errorf("%w: no items", ErrBatchSize)
	}
	if a.client == nil {
		return nil, errors.New("OPIN BaseURL is not configured: set OPIN_REPORT_URL")
	}
	if config.OrganisationID == "" {
		return nil, fmt.Errorf("tenant %s (%s) has no organisation id", config.TenantID, config.Ecosystem)
	}
	events, indexesByRole, err := groupByRole(items)
	if err != nil {
		return nil, err
	}
	signer, err := a.signer(config)
	if err != nil {
		return nil, err
	}

	result := &regulator.Result{Items: make([]regulator.ItemResult, len(items)), StatusCode: http.StatusOK}
	var payloads [][]byte
	for _, role := range roleOrder {
		indexes := indexesByRole[role]
		if len(indexes) == 0 {
			continue
		}
		roleEvents := make([]json.RawMessage, len(indexes))
		for i, index := range indexes {
			roleEvents[i] = events[index]
		}
		status, results, payload, err := a.send(ctx, config, signer, role, roleEvents)
		if err != nil {
			return nil, err
		}
		payloads = append(payloads, payload)
		if status == http.StatusMultiStatus {
			result.StatusCode = http.StatusMultiStatus
		}
		for i, index := range indexes {
			result.Items[index] = regulator.ItemResult{
				CorrelationID: results[i].CorrelationID,
				Message:       results[i].Message,
				ReportID:      results[i].ReportID,
				Status:        results[i].Status,
			}
		}
	}
	result.RequestBody = joinJSONArray(payloads)
	return result, nil
}

// send signs one role's batch and posts it.
func (a *Adapter) send(ctx context.Context, config *tenant.Config, signer *Signer, role string,
	events []json.RawMessage,
) (int, []eventResult, []byte, error) {
	path := BatchPath(role)
	payload, err := batchPayload(config.OrganisationID, events)
	if err != nil {
		return 0, nil, nil, err
	}
	compact, err := signer.Sign(payload)
	if err != nil {
		return 0, nil, nil, err
	}

	started := time.Now()
	status, results, err := a.client.postBatch(ctx, path, compact, len(events))
	a.logger.Debug("OPIN batch posted", "event", "opin.batch_posted", "tenant_id", config.TenantID,
		"path", path, "events", len(events), "status_code", status,
		"duration_ms", time.Since(started).Milliseconds(), "failed", err != nil)
	if err != nil {
		return status, nil, nil, fmt.Errorf("tenant %s: %w", config.TenantID, err)
	}
	return status, results, payload, nil
}

// groupByRole decodes the items' envelopes. It returns each item's stored
// event bytes, by item index, and the item indexes of each role in their
// original order.
func groupByRole(items []json.RawMessage) ([]json.RawMessage, map[string][]int, error) {
	events := make([]json.RawMessage, len(items))
	indexesByRole := map[string][]int{}
	for i, raw := range items {
		var item storedItem
		if err := json.Unmarshal(raw, &item); err != nil {
			return nil, nil, fmt.Errorf("%w: item %d does not decode: %w", ErrInvalidEvent, i, err)
		}
		if BatchPath(item.Role) == "" {
			return nil, nil, fmt.Errorf("%w: item %d has role %q, want CLIENT or SERVER", ErrInvalidEvent, i, item.Role)
		}
		if len(item.Event) == 0 {
			return nil, nil, fmt.Errorf("%w: item %d has no event", ErrInvalidEvent, i)
		}
		events[i] = item.Event
		indexesByRole[item.Role] = append(indexesByRole[item.Role], i)
	}
	for role, indexes := range indexesByRole {
		if len(indexes) > MaxBatchSize {
			return nil, nil, fmt.Errorf("%w: %d %s events, want at most %d", ErrBatchSize, len(indexes), role, MaxBatchSize)
		}
	}
	return events, indexesByRole, nil
}

// batchPayload builds the batchBody JSON, copying each event's bytes as
// stored.
func batchPayload(organisationID string, events []json.RawMessage) ([]byte, error) {
	organisation, err := json.Marshal(organisationID)
	if err != nil {
		return nil, fmt.Errorf("encode organisationId: %w", err)
	}
	payload := []byte(`{"organisationId":`)
	payload = append(payload, organisation...)
	payload = append(payload, `,"events":`...)
	payload = append(payload, joinJSONArray(events)...)
	return append(payload, '}'), nil
}

// joinJSONArray returns the JSON array whose elements are the given encoded
// values.
func joinJSONArray[T ~[]byte](values []T) []byte {
	size := 2
	for _, value := range values {
		size += len(value) + 1
	}
	out := make([]byte, 0, size)
	out = append(out, '[')
	for i, value := range values {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, value...)
	}
	return append(out, ']')
}

// signer returns the tenant's Signer, building it from the tenant's
// credential reference when missing or stale.
func (a *Adapter) signer(config *tenant.Config) (*Signer, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if cached, ok := a.signers[config.TenantID]; ok && cached.updatedAt.Equal(config.UpdatedAt) {
		return cached.signer, nil
	}

	keyPEM, err := config.Credential(SigningKeyCredential)
	if err != nil {
		return nil, err
	}
	key, err := ParseSigningKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load signing key of tenant %s: %w", config.TenantID, err)
	}
	signer, err := NewSigner(key, config.SigningKeyID)
	if err != nil {
		return nil, fmt.Errorf("tenant %s: %w", config.TenantID, err)
	}
	a.signers[config.TenantID] = &tenantSigner{signer: signer, updatedAt: config.UpdatedAt}
	return signer, nil
}
