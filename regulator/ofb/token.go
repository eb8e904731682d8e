package ofb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Token endpoint paths on the PCM authorisation host.
const (
	TokenPath      = "/token/"
	TokenFreshPath = "/token-fresh/"
)

// tokenRefreshMargin is the minimum remaining lifetime of a cached token.
// A token is also refreshed once less than a tenth of its lifetime remains.
const tokenRefreshMargin = 5 * time.Minute

// tokenResponse is the part of the PCM SecurityResponse that the client uses.
type tokenResponse struct {
	AccessToken string `json:"access_token"`
	ExpiresIn   int64  `json:"expires_in"`
	TokenType   string `json:"token_type"`
}

// tokenSource caches one access token and lets one request at a time fetch a
// new one. Goroutines that need a token while a fetch runs wait for it.
type tokenSource struct {
	client   *http.Client
	clientID string
	now      func() time.Time
	tokenURL string

	mu       sync.Mutex
	token    string
	expiry   time.Time
	refresh  time.Time
	inflight *tokenFetch
}

// tokenFetch is one token request in flight. done is closed when token and
// err are set.
type tokenFetch struct {
	done  chan struct{}
	token string
	err   error
}

// get returns the cached token, fetching one from /token/ when none is cached
// or the cached one is due for refresh.
func (s *tokenSource) get(ctx context.Context) (string, error) {
	s.mu.Lock()
	if s.token != "" && s.now().Before(s.refresh) {
		token := s.token
		s.mu.Unlock()
		return token, nil
	}
	fetch := s.startLocked(TokenPath)
	s.mu.Unlock()
	return fetch.wait(ctx)
}

// forceRefresh fetches a new token from /token-fresh/. When stale is not
// empty and the cached token already differs from it, another goroutine
// has refreshed, so the cached token is returned without a request.
func (s *tokenSource) forceRefresh(ctx context.Context, stale string) (string, error) {
	s.mu.Lock()
	if stale != "" && s.token != "" && s.token != stale && s.now().Before(s.refresh) {
		token := s.token
		s.mu.Unlock()
		return token, nil
	}
	if s.token == stale {
		s.token = ""
	}
	fetch := s.startLocked(TokenFreshPath)
	s.mu.Unlock()
	return fetch.wait(ctx)
}

// startLocked joins the fetch in flight or starts one. The fetch runs
// without the caller's cancellation, so one caller giving up does not fail
// the others; the HTTP client timeout bounds it.
func (s *tokenSource) startLocked(path string) *tokenFetch {
	if s.inflight != nil {
		return s.inflight
	}
	fetch := &tokenFetch{done: make(chan struct{})}
	s.inflight = fetch

	go func() {
		token, lifetime, err := s.request(context.Background(), path)
		fetched := s.now()

		s.mu.Lock()
		if err == nil {
			s.token = token
			s.expiry = fetched.Add(lifetime)
			s.refresh = s.expiry.Add(-max(tokenRefreshMargin, lifetime/10))
		}
		s.inflight = nil
		s.mu.Unlock()

		fetch.token, fetch.err = token, err
		close(fetch.done)
	}()
	return fetch
}

func (f *tokenFetch) wait(ctx context.Context) (string, error) {
	select {
	case <-f.done:
		return f.token, f.err
	case <-ctx.Done():
		return "", fmt.Errorf("wait for PCM token: %w", ctx.Err())
	}
}

// request posts the client_credentials grant to the token endpoint over
// mutual TLS and returns the token and its lifetime.
func (s *tokenSource) request(ctx context.Context, path string) (string, time.Duration, error) {
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {s.clientID}}
	endpoint := strings.TrimSuffix(s.tokenURL, "/") + path
	request, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint,
		strings.NewReader(form.Encode()))
	if err != nil {
		return "", 0, fmt.Errorf("build PCM token request: %w", err)
	}
	request.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	request.Header.Set("Accept", "application/json")

	response, err := s.client.Do(request)
	if err != nil {
		return "", 0, fmt.Errorf("%w: POST %s: %w", ErrTransport, path, err)
	}
	defer response.Body.Close()
	body, err := io.ReadAll(io.LimitReader(response.Body, 1<<20))
	if err != nil {
		return "", 0, fmt.Errorf("%w: read POST %s response: %w", ErrTransport, path, err)
	}

	if response.StatusCode != http.StatusOK {
		return "", 0, &StatusError{
			Message:    errorMessage(body),
			Operation:  "POST " + path,
			StatusCode: response.StatusCode,
		}
	}

	var token tokenResponse
	if err := json.Unmarshal(body, &token); err != nil {
		return "", 0, fmt.Errorf("decode PCM token response: %w", err)
	}
	if token.AccessToken == "" {
		return "", 0, errors.New("PCM token response has no access_token")
	}
	if !strings.EqualFold(token.TokenType, "Bearer") {
		return "", 0, fmt.Errorf("PCM token response has token_type %q, want Bearer", token.TokenType)
	}
	if token.ExpiresIn <= 0 {
		return "", 0, fmt.Errorf("PCM token response has expires_in %d, want above 0", token.ExpiresIn)
	}
	return token.AccessToken, time.Duration(token.ExpiresIn) * time.Second, nil
}

// errorMessage returns the message of a PCM error body: the "message" field,
// the OAuth "error_description" or "error" field, or the start of the body.
func errorMessage(body []byte) string {
	var fields struct {
		Error            string `json:"error"`
		ErrorDescription string `json:"error_description"`
		Message          string `json:"message"`
	}
	if json.Unmarshal(body, &fields) == nil {
		for _, message := range []string{fields.Message, fields.ErrorDescription, fields.Error} {
			if message != "" {
				return message
			}
		}
	}
	text := strings.TrimSpace(string(body))
	if len(text) > 200 {
		text = text[:200]
	}
	return text
}
