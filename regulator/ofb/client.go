package ofb

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// MaxBatchSize is the maximum number of reports in one PCM request. The PCM
// returns 413 above it.
const MaxBatchSize = 5000

// DefaultTimeout is the HTTP timeout of a Client whose Config.Timeout is 0.
const DefaultTimeout = 30 * time.Second

// maxResponseBytes bounds how much of a response body the client reads. A
// 5,000-item result array is about 1 MB.
const maxResponseBytes = 16 << 20

// Config configures a Client. The zero value of each field other than
// BaseURL, ClientID and TokenURL selects its default.
type Config struct {
	// BaseURL is the scheme and host of the PCM report API, to which the
	// client appends ReportPath. Required. There is no default, so a
	// misconfigured client never reaches the production PCM.
	BaseURL string

	// Certificate is the organisation's transport certificate and key. It is
	// presented only on the token calls, which use mutual TLS. Report calls
	// send no client certificate.
	Certificate tls.Certificate

	// ClientID is the software statement id, sent as client_id on the token
	// calls. Required.
	ClientID string

	// Now returns the current time, for token expiry and Retry-After dates.
	// The default is time.Now.
	Now func() time.Time

	// RootCAs are the certificate authorities trusted for the PCM servers.
	// The default, nil, uses the system pool. Tests and local runs set the
	// fake PCM's authority here.
	RootCAs *x509.CertPool

	// Timeout bounds each HTTP request, connection to last body byte. The
	// default is DefaultTimeout.
	Timeout time.Duration

	// TokenURL is the scheme and host of the PCM authorisation server, to
	// which the client appends TokenPath or TokenFreshPath. Required.
	TokenURL string
}

// Client sends reports to the Open Finance Brasil PCM private report API. It
// is safe for concurrent use and fetches one access token at a time.
type Client struct {
	baseURL string
	http    *http.Client
	now     func() time.Time
	tokens  *tokenSource
}

// ItemResult is the PCM's verdict on one report of a request.
type ItemResult struct {
	CorrelationID string `json:"correlationId,omitempty"`
	Message       string `json:"message,omitempty"`
	ReportID      string `json:"reportId"`
	Status        string `json:"status"`
}

// Item statuses of a PCM response.
const (
	StatusAccepted  = "ACCEPTED"
	StatusDiscarded = "DISCARDED"
)

// PostResult is the outcome of one PostReports request.
type PostResult struct {
	// Items holds the result of each report, in request order, for status
	// 200 and 207.
	Items []ItemResult

	// Message is the "message" field of an error response.
	Message string

	// RequestBody is the exact body sent.
	RequestBody []byte

	// RetryAfter is the parsed Retry-After header, or 0 when absent.
	RetryAfter time.Duration

	// StatusCode is the HTTP status of the response.
	StatusCode int
}

// NewClient returns a client for the PCM at cfg.BaseURL and cfg.TokenURL.
func NewClient(cfg Config) (*Client, error) {
	for name, value := range map[string]string{"BaseURL": cfg.BaseURL, "TokenURL": cfg.TokenURL} {
		parsed, err := url.Parse(value)
		if err != nil || parsed.Scheme != "https" || parsed.Host == "" {
			return nil, fmt.Errorf("invalid PCM %s %q: want an https URL with a host", name, value)
		}
	}
	if cfg.ClientID == "" {
		return nil, errors.New("missing PCM ClientID: set the software statement id")
	}
	if cfg.Certificate.PrivateKey == nil {
		return nil, errors.New("missing PCM Certificate: the token call needs the transport certificate")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}

	reportTLS := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: cfg.RootCAs}
	tokenTLS := reportTLS.Clone()
	tokenTLS.Certificates = []tls.Certificate{cfg.Certificate}

	return &Client{
		baseURL: strings.TrimSuffix(cfg.BaseURL, "/"),
		http:    newHTTPClient(reportTLS, cfg.Timeout),
		now:     cfg.Now,
		tokens: &tokenSource{
			client:   newHTTPClient(tokenTLS, cfg.Timeout),
			clientID: cfg.ClientID,
			now:      cfg.Now,
			tokenURL: cfg.TokenURL,
		},
	}, nil
}

func newHTTPClient(tlsConfig *tls.Config, timeout time.Duration) *http.Client {
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.TLSClientConfig = tlsConfig
	transport.Proxy = nil
	return &http.Client{Transport: transport, Timeout: timeout}
}

// RefreshToken replaces the cached access token with a new one from
// /token-fresh/.
func (c *Client) RefreshToken(ctx context.Context) error {
	_, err := c.tokens.forceRefresh(ctx, "")
	return err
}

// PostReports sends one batch of 1 to MaxBatchSize reports. For status 200
// and 207 it returns the per-report results in request order, and an error
// wrapping ErrResponseMismatch when their count differs from len(reports).
// For other statuses it returns the result and a *StatusError. A 401 response
// makes the client fetch a new token from /token-fresh/ and send the batch
// once more. Transport failures wrap ErrTransport and return no result.
func (c *Client) PostReports(ctx context.Context, reports []Report) (*PostResult, error) {
	if len(reports) == 0 || len(reports) > MaxBatchSize {
		return nil, fmt.Errorf("%w: %d reports, want 1 to %d", ErrBatchSize, len(reports), MaxBatchSize)
	}
	body, err := json.Marshal(reports)
	if err != nil {
		return nil, fmt.Errorf("encode PCM reports: %w", err)
	}
	return c.post(ctx, body, len(reports))
}

// PostEncodedReports is PostReports for reports already encoded as JSON,
// which it sends byte for byte as the elements of the request array.
func (c *Client) PostEncodedReports(ctx context.Context, reports []json.RawMessage) (*PostResult, error) {
	if len(reports) == 0 || len(reports) > MaxBatchSize {
		return nil, fmt.Errorf("%w: %d reports, want 1 to %d", ErrBatchSize, len(reports), MaxBatchSize)
	}
	size := 2
	for _, report := range reports {
		size += len(report) + 1
	}
	body := make([]byte, 0, size)
	body = append(body, '[')
	for i, report := range reports {
		if i > 0 {
			body = append(body, ',')
		}
		body = append(body, report...)
	}
	body = append(body, ']')
	return c.post(ctx, body, len(reports))
}

func (c *Client) post(ctx context.Context, body []byte, count int) (*PostResult, error) {
	response, responseBody, err := c.send(ctx, http.MethodPost, ReportPath, body)
	if err != nil {
		return nil, err
	}

	result := &PostResult{
		RequestBody: body,
		RetryAfter:  parseRetryAfter(response.Header.Get("Retry-After"), c.now()),
		StatusCode:  response.StatusCode,
	}
	if response.StatusCode != http.StatusOK && response.StatusCode != http.StatusMultiStatus {
		result.Message = errorMessage(responseBody)
		return result, &StatusError{
			Message:    result.Message,
			Operation:  "POST report",
			RetryAfter: result.RetryAfter,
			StatusCode: response.StatusCode,
		}
	}

	if err := json.Unmarshal(responseBody, &result.Items); err != nil {
		return result, fmt.Errorf("%w: decode HTTP %d body: %w", ErrResponseMismatch, response.StatusCode, err)
	}
	if len(result.Items) != count {
		return result, fmt.Errorf("%w: %d results for %d reports",
			ErrResponseMismatch, len(result.Items), count)
	}
	return result, nil
}

// GetReport reads back the report stored under a fapiInteractionId. It
// returns found false on 404 and a *StatusError on other statuses than 200.
// The PCM stores reports asynchronously, so a report just sent may not be
// found yet.
func (c *Client) GetReport(ctx context.Context, fapiInteractionID string) (bool, json.RawMessage, error) {
	path := ReportPath + url.PathEscape(fapiInteractionID)
	response, body, err := c.send(ctx, http.MethodGet, path, nil)
	if err != nil {
		return false, nil, err
	}

	switch response.StatusCode {
	case http.StatusOK:
		return true, json.RawMessage(body), nil
	case http.StatusNotFound:
		return false, nil, nil
	default:
		return false, nil, &StatusError{
			Message:    errorMessage(body),
			Operation:  "GET report",
			RetryAfter: parseRetryAfter(response.Header.Get("Retry-After"), c.now()),
			StatusCode: response.StatusCode,
		}
	}
}

// send makes an authorised request, refreshing the token and repeating the
// request once when the response is 401.
func (c *Client) send(ctx context.Context, method, path string, body []byte) (*http.Response, []byte, error) {
	token, err := c.tokens.get(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("get PCM token: %w", err)
	}

	response, responseBody, err := c.do(ctx, method, path, body, token)
	if err != nil || response.StatusCode != http.StatusUnauthorized {
		return response, responseBody, err
	}

	token, err = c.tokens.forceRefresh(ctx, token)
	if err != nil {
		return nil, nil, fmt.Errorf("refresh PCM token after HTTP 401: %w", err)
	}
	return c.do(ctx, method, path, body, token)
}

func (c *Client) do(ctx context.Context, method, path string, body []byte, token string) (*http.Response, []byte, error) {
	var reader io.Reader
	if body != nil {
		reader = bytes.NewReader(body)
	}
	request, err := http.NewRequestWithContext(ctx, method, c.baseURL+path, reader)
	if err != nil {
		return nil, nil, fmt.Errorf("build PCM %s request: %w", method, err)
	}
	request.Header.Set("Authorization", "Bearer "+token)
	request.Header.Set("Accept", "application/json")
	if body != nil {
		request.Header.Set("Content-Type", "application/json")
	}

	response, err := c.http.Do(request)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s %s: %w", ErrTransport, method, ReportPath, err)
	}
	defer response.Body.Close()

	responseBody, err := io.ReadAll(io.LimitReader(response.Body, maxResponseBytes))
	if err != nil {
		return nil, nil, fmt.Errorf("%w: read %s %s response: %w", ErrTransport, method, ReportPath, err)
	}
	return response, responseBody, nil
}

// parseRetryAfter parses a Retry-After header given in seconds or as an HTTP
// date. It returns 0 for an absent or invalid header and for a past date.
func parseRetryAfter(header string, now time.Time) time.Duration {
	header = strings.TrimSpace(header)
	if header == "" {
		return 0
	}
	if seconds, err := strconv.ParseInt(header, 10, 64); err == nil {
		if seconds < 0 {
			return 0
		}
		return time.Duration(seconds) * time.Second
	}
	if date, err := http.ParseTime(header); err == nil && date.After(now) {
		return date.Sub(now)
	}
	return 0
}
