package opin

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/finnest/eventruntime/regulator"
)

// DefaultTimeout bounds each request when AdapterConfig.Timeout is 0.
const DefaultTimeout = 30 * time.Second

// maxResponseBytes bounds how much of a response body is read. A 5,000-event
// result array is about 1 MB.
const maxResponseBytes = 16 << 20

// Errors that Report wraps, for errors.Is.
var (
	// ErrBatchSize marks a Report call with no items, or with more than
	// MaxBatchSize items of one role. Nothing was sent.
	ErrBatchSize = errors.New("invalid OPIN batch size")

	// ErrResponseMismatch marks a 200 or 207 response whose result array does
	// not decode or does not have one entry per event sent. The platform may
	// have stored some of the events.
	ErrResponseMismatch = errors.New("OPIN response does not match the request")

	// ErrTransport marks a request that got no HTTP response, such as a
	// refused connection or a timeout. Whether the platform stored the
	// events is unknown.
	ErrTransport = errors.New("OPIN request failed")
)

// eventResult is one entry of a batch response: a "success" for status 200
// and a "response400" for status 207. Both list one entry per request event,
// in request order.
type eventResult struct {
	CorrelationID string `json:"correlationId"`
	Message       string `json:"message"`
	ReportID      string `json:"reportId"`
	Status        string `json:"status"`
}

// client posts signed batches to the ingestion API.
type client struct {
	baseURL string
	http    *http.Client
}

func newClient(baseURL string, rootCAs *x509.CertPool, timeout time.Duration) *client {
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: rootCAs}
	transport.Proxy = nil
	return &client{
		baseURL: strings.TrimSuffix(baseURL, "/"),
		http:    &http.Client{Transport: transport, Timeout: timeout},
	}
}

// postBatch sends one compact JWS to path. For status 200 and 207 it returns
// the per-event results, checking that there are count of them. For other
// statuses it returns a *regulator.StatusError with the body's message.
func (c *client) postBatch(ctx context.Context, path, compactJWS string, count int) (int, []eventResult, error) {
	request, err := http.NewRequestWithContext(ctx, http.MethodPost, c.baseURL+path, strings.NewReader(compactJWS))
	if err != nil {
		return 0, nil, fmt.Errorf("build OPIN request to %s: %w", path, err)
	}
	request.Header.Set("Content-Type", "application/jwt")
	request.Header.Set("Accept", "application/json")

	response, err := c.http.Do(request)
	if err != nil {
		return 0, nil, fmt.Errorf("%w: POST %s: %w", ErrTransport, path, err)
	}
	defer response.Body.Close()
	body, err := io.ReadAll(io.LimitReader(response.Body, maxResponseBytes))
	if err != nil {
		return 0, nil, fmt.Errorf("%w: read POST %s response: %w", ErrTransport, path, err)
	}

	if response.StatusCode != http.StatusOK && response.StatusCode != http.StatusMultiStatus {
		return response.StatusCode, nil, &regulator.StatusError{
			Message:    fmt.Sprintf("POST %s: %s", path, errorMessage(body)),
			StatusCode: response.StatusCode,
		}
	}
	var results []eventResult
	if err := json.Unmarshal(body, &results); err != nil {
		return response.StatusCode, nil, fmt.Errorf("%w: decode HTTP %d body of POST %s: %w",
			ErrResponseMismatch, response.StatusCode, path, err)
	}
	if len(results) != count {
		return response.StatusCode, nil, fmt.Errorf("%w: POST %s returned %d results for %d events",
			ErrResponseMismatch, path, len(results), count)
	}
	return response.StatusCode, results, nil
}

// errorMessage returns the "message" of an error body, or the start of the
// body when it has none.
func errorMessage(body []byte) string {
	var decoded struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(body, &decoded) == nil && decoded.Message != "" {
		return decoded.Message
	}
	text := strings.TrimSpace(string(body))
	if len(text) > 200 {
		text = text[:200] + "..."
	}
	return text
}
