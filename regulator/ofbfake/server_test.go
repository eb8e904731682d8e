package ofbfake_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/regulator/ofb"
	"github.com/finnest/eventruntime/regulator/ofbfake"
)

const (
	orgA = "11111111-1111-4111-8111-111111111111"
	orgB = "22222222-2222-4222-8222-222222222222"
	ssID = "33333333-3333-4333-8333-333333333333"
)

type testBundle struct {
	fake  *ofbfake.Server
	http  *http.Client // trusts the fake and presents orgA's certificate
	token string       // orgA's access token
}

func setup(t *testing.T) *testBundle {
	t.Helper()
	fake, err := ofbfake.New(ofbfake.Config{})
	require.NoError(t, err)
	require.NoError(t, fake.Start())
	t.Cleanup(func() { require.NoError(t, fake.Close()) })

	cert, _, _, err := fake.IssueClientCertificate(orgA)
	require.NoError(t, err)
	client := httpClient(fake.RootCAs(), &cert)

	bundle := &testBundle{fake: fake, http: client}
	bundle.token = bundle.fetchToken(t)
	return bundle
}

func httpClient(roots *x509.CertPool, cert *tls.Certificate) *http.Client {
	config := &tls.Config{RootCAs: roots}
	if cert != nil {
		config.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: config}}
}

func (b *testBundle) fetchToken(t *testing.T) string {
	t.Helper()
	status, body := postForm(t, b.http, b.fake.URL()+ofb.TokenPath,
		url.Values{"grant_type": {"client_credentials"}, "client_id": {ssID}})
	require.Equal(t, http.StatusOK, status, string(body))
	var response struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int64  `json:"expires_in"`
		TokenType   string `json:"token_type"`
	}
	require.NoError(t, json.Unmarshal(body, &response))
	require.Equal(t, "Bearer", response.TokenType)
	require.Equal(t, int64(6*3600), response.ExpiresIn)
	require.NotEmpty(t, response.AccessToken)
	return response.AccessToken
}

func postForm(t *testing.T, client *http.Client, target string, form url.Values) (int, []byte) {
	t.Helper()
	response, err := client.PostForm(target, form)
	require.NoError(t, err)
	defer response.Body.Close()
	body, err := io.ReadAll(response.Body)
	require.NoError(t, err)
	return response.StatusCode, body
}

// post sends a raw report request with orgA's token.
func (b *testBundle) post(t *testing.T, contentType string, body []byte) (int, []byte) {
	t.Helper()
	request, err := http.NewRequest(http.MethodPost, b.fake.URL()+ofb.ReportPath, bytes.NewReader(body))
	require.NoError(t, err)
	request.Header.Set("Authorization", "Bearer "+b.token)
	request.Header.Set("Content-Type", contentType)
	response, err := b.http.Do(request)
	require.NoError(t, err)
	defer response.Body.Close()
	responseBody, err := io.ReadAll(response.Body)
	require.NoError(t, err)
	return response.StatusCode, responseBody
}

// serverItem is a valid SERVER report item of orgA for the current time.
func serverItem(id string) map[string]any {
	return map[string]any{
		"fapiInteractionId": id,
		"endpoint":          "/open-banking/accounts/v2/accounts/{accountId}",
		"statusCode":        200,
		"httpMethod":        "GET",
		"timestamp":         time.Now().UTC().Format(ofb.TimestampLayout),
		"processTimespan":   120,
		"clientOrgId":       orgB,
		"serverOrgId":       orgA,
		"role":              "SERVER",
	}
}

func encode(t *testing.T, value any) []byte {
	t.Helper()
	encoded, err := json.Marshal(value)
	require.NoError(t, err)
	return encoded
}

func message(t *testing.T, body []byte) string {
	t.Helper()
	var decoded struct {
		Message string `json:"message"`
	}
	require.NoError(t, json.Unmarshal(body, &decoded), string(body))
	return decoded.Message
}

func TestToken(t *testing.T) {
	t.Parallel()
	bundle := setup(t)

	t.Run("RequiresClientCertificate", func(t *testing.T) {
		t.Parallel()
		noCert := httpClient(bundle.fake.RootCAs(), nil)
		status, body := postForm(t, noCert, bundle.fake.URL()+ofb.TokenPath,
			url.Values{"grant_type": {"client_credentials"}, "client_id": {ssID}})
		require.Equal(t, http.StatusUnauthorized, status)
		require.NotEmpty(t, message(t, body))
	})

	t.Run("FreshTokenRequiresClientCertificate", func(t *testing.T) {
		t.Parallel()
		noCert := httpClient(bundle.fake.RootCAs(), nil)
		status, _ := postForm(t, noCert, bundle.fake.URL()+ofb.TokenFreshPath,
			url.Values{"grant_type": {"client_credentials"}, "client_id": {ssID}})
		require.Equal(t, http.StatusUnauthorized, status)
	})

	t.Run("RejectsCertificateOfAnotherCA", func(t *testing.T) {
		t.Parallel()
		other, err := ofbfake.New(ofbfake.Config{})
		require.NoError(t, err)
		foreign, _, _, err := other.IssueClientCertificate(orgA)
		require.NoError(t, err)
		client := httpClient(bundle.fake.RootCAs(), &foreign)
		_, err = client.PostForm(bundle.fake.URL()+ofb.TokenPath,
			url.Values{"grant_type": {"client_credentials"}, "client_id": {ssID}})
		require.Error(t, err)
	})

	t.Run("RequiresClientID", func(t *testing.T) {
		t.Parallel()
		status, body := postForm(t, bundle.http, bundle.fake.URL()+ofb.TokenPath,
			url.Values{"grant_type": {"client_credentials"}})
		require.Equal(t, http.StatusBadRequest, status)
		require.Contains(t, string(body), "invalid_client")
	})

	t.Run("RequiresClientCredentialsGrant", func(t *testing.T) {
		t.Parallel()
		status, body := postForm(t, bundle.http, bundle.fake.URL()+ofb.TokenPath,
			url.Values{"grant_type": {"password"}, "client_id": {ssID}})
		require.Equal(t, http.StatusBadRequest, status)
		require.Contains(t, string(body), "unsupported_grant_type")
	})

	t.Run("IssuesUniqueTokens", func(t *testing.T) {
		t.Parallel()
		require.NotEqual(t, bundle.token, bundle.fetchToken(t))
	})
}

func TestPostReports(t *testing.T) {
	t.Parallel()

	t.Run("MissingTokenIsUnauthorized", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		bundle.token = ""
		status, body := bundle.post(t, "application/json", encode(t, []any{serverItem(uuid.NewString())}))
		require.Equal(t, http.StatusUnauthorized, status)
		require.Equal(t, "Unauthorized", message(t, body))
	})

	t.Run("UnknownTokenIsUnauthorized", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		bundle.token = "not-a-token"
		status, _ := bundle.post(t, "application/json", encode(t, []any{serverItem(uuid.NewString())}))
		require.Equal(t, http.StatusUnauthorized, status)
	})

	t.Run("ExpiredTokenIsUnauthorized", func(t *testing.T) {
		t.Parallel()
		var clock atomic.Int64
		clock.Store(time.Now().UnixNano())
		now := func() time.Time { return time.Unix(0, clock.Load()) }
		fake, err := ofbfake.New(ofbfake.Config{Now: now, TokenLifetime: time.Minute})
		require.NoError(t, err)
		require.NoError(t, fake.Start())
		t.Cleanup(func() { require.NoError(t, fake.Close()) })
		cert, _, _, err := fake.IssueClientCertificate(orgA)
		require.NoError(t, err)
		bundle := &testBundle{fake: fake, http: httpClient(fake.RootCAs(), &cert)}
		status, body := postForm(t, bundle.http, fake.URL()+ofb.TokenPath,
			url.Values{"grant_type": {"client_credentials"}, "client_id": {ssID}})
		require.Equal(t, http.StatusOK, status)
		var token struct {
			AccessToken string `json:"access_token"`
		}
		require.NoError(t, json.Unmarshal(body, &token))
		bundle.token = token.AccessToken

		clock.Add(int64(time.Minute))
		status, _ = bundle.post(t, "application/json", encode(t, []any{serverItem(uuid.NewString())}))
		require.Equal(t, http.StatusUnauthorized, status)
	})

	t.Run("WrongContentTypeIsUnsupported", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		status, _ := bundle.post(t, "text/plain", encode(t, []any{serverItem(uuid.NewString())}))
		require.Equal(t, http.StatusUnsupportedMediaType, status)
	})

	t.Run("ObjectBodyIsBadRequest", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		status, body := bundle.post(t, "application/json", encode(t, serverItem(uuid.NewString())))
		require.Equal(t, http.StatusBadRequest, status)
		require.Equal(t, "Invalid payload format: MUST be an array", message(t, body))
	})

	t.Run("EmptyArrayIsBadRequest", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		status, _ := bundle.post(t, "application/json", []byte(`[]`))
		require.Equal(t, http.StatusBadRequest, status)
	})

	t.Run("MoreThan5000ItemsIsTooLarge", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		items := make([]any, 5001)
		for i := range items {
			items[i] = serverItem(uuid.NewString())
		}
		status, body := bundle.post(t, "application/json", encode(t, items))
		require.Equal(t, http.StatusRequestEntityTooLarge, status)
		require.Equal(t, "Record limit exceeded", message(t, body))
		require.Empty(t, bundle.fake.SeenCounts())
	})

	t.Run("Exactly5000ItemsAreAccepted", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		items := make([]any, 5000)
		for i := range items {
			items[i] = serverItem(uuid.NewString())
		}
		status, body := bundle.post(t, "application/json", encode(t, items))
		require.Equal(t, http.StatusOK, status)
		var results []map[string]any
		require.NoError(t, json.Unmarshal(body, &results))
		require.Len(t, results, 5000)
		require.Len(t, bundle.fake.Accepted(), 5000)
		require.Empty(t, bundle.fake.Violations())
	})

	t.Run("MissingStatusCodeIsBadRequestAndRecorded", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		item := serverItem(uuid.NewString())
		delete(item, "statusCode")
		status, body := bundle.post(t, "application/json", encode(t, []any{serverItem(uuid.NewString()), item}))
		require.Equal(t, http.StatusBadRequest, status)
		require.Contains(t, message(t, body), "statusCode")
		violations := bundle.fake.Violations()
		require.Len(t, violations, 1)
		require.Contains(t, violations[0], "statusCode")
		require.Empty(t, bundle.fake.SeenCounts())
		require.Empty(t, bundle.fake.Accepted())
	})

	t.Run("UnknownHTTPMethodIsBadRequest", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		item := serverItem(uuid.NewString())
		item["httpMethod"] = "HEAD"
		status, _ := bundle.post(t, "application/json", encode(t, []any{item}))
		require.Equal(t, http.StatusBadRequest, status)
		require.Len(t, bundle.fake.Violations(), 1)
	})

	t.Run("TimestampWithoutMillisecondsIsDiscarded", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		item := serverItem(uuid.NewString())
		item["timestamp"] = time.Now().In(time.FixedZone("BRT", -3*3600)).Format("2006-01-02T15:04:05-07:00")
		status, body := bundle.post(t, "application/json", encode(t, []any{item}))
		require.Equal(t, http.StatusMultiStatus, status)
		require.Contains(t, string(body), "UTC with milliseconds")
	})

	t.Run("UnlistedEndpointIsDiscarded", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		item := serverItem(uuid.NewString())
		item["endpoint"] = "/open-banking/accounts/v2/accounts/123"
		status, body := bundle.post(t, "application/json", encode(t, []any{item}))
		require.Equal(t, http.StatusMultiStatus, status)
		require.Contains(t, string(body), "Endpoint is not accepted")
	})

	t.Run("ResponsesMatchSpec", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		wrongOrg := serverItem(uuid.NewString())
		wrongOrg["serverOrgId"] = orgB
		withCorrelation := serverItem(uuid.NewString())
		withCorrelation["correlationId"] = "journey-1"
		status, body := bundle.post(t, "application/json", encode(t, []any{withCorrelation, wrongOrg}))
		require.Equal(t, http.StatusMultiStatus, status)
		require.Contains(t, string(body), `"correlationId":"journey-1"`)
		require.Empty(t, bundle.fake.Violations())
	})
}

func TestSeenCounts(t *testing.T) {
	t.Parallel()
	bundle := setup(t)
	id := uuid.NewString()
	old := serverItem(id)
	old["timestamp"] = time.Now().Add(-8 * 24 * time.Hour).UTC().Format(ofb.TimestampLayout)

	status, _ := bundle.post(t, "application/json", encode(t, []any{serverItem(id)}))
	require.Equal(t, http.StatusOK, status)
	status, _ = bundle.post(t, "application/json", encode(t, []any{old}))
	require.Equal(t, http.StatusMultiStatus, status)

	require.Equal(t, 2, bundle.fake.Seen(id))
	require.Equal(t, map[string]int{id: 2}, bundle.fake.SeenCounts())
	require.Len(t, bundle.fake.Accepted(), 1)
	require.Equal(t, 2, bundle.fake.Requests())
}

func TestQueuedFault(t *testing.T) {
	t.Parallel()
	bundle := setup(t)
	bundle.fake.QueueFaults(ofbfake.Fault{Status: http.StatusTooManyRequests, RetryAfter: "3"})

	request, err := http.NewRequest(http.MethodPost, bundle.fake.URL()+ofb.ReportPath,
		bytes.NewReader(encode(t, []any{serverItem(uuid.NewString())})))
	require.NoError(t, err)
	request.Header.Set("Authorization", "Bearer "+bundle.token)
	request.Header.Set("Content-Type", "application/json")
	response, err := bundle.http.Do(request)
	require.NoError(t, err)
	require.NoError(t, response.Body.Close())
	require.Equal(t, http.StatusTooManyRequests, response.StatusCode)
	require.Equal(t, "3", response.Header.Get("Retry-After"))

	status, _ := bundle.post(t, "application/json", encode(t, []any{serverItem(uuid.NewString())}))
	require.Equal(t, http.StatusOK, status)
}

// BenchmarkPost5000 measures one 5,000-item request through the fake over
// TLS: spec validation, per-item checks and response validation.
func BenchmarkPost5000(b *testing.B) {
	fake, err := ofbfake.New(ofbfake.Config{})
	if err != nil {
		b.Fatal(err)
	}
	if err := fake.Start(); err != nil {
		b.Fatal(err)
	}
	defer fake.Close()
	cert, _, _, err := fake.IssueClientCertificate(orgA)
	if err != nil {
		b.Fatal(err)
	}
	client := httpClient(fake.RootCAs(), &cert)
	response, err := client.PostForm(fake.URL()+ofb.TokenPath,
		url.Values{"grant_type": {"client_credentials"}, "client_id": {ssID}})
	if err != nil {
		b.Fatal(err)
	}
	var token struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(response.Body).Decode(&token); err != nil {
		b.Fatal(err)
	}
	response.Body.Close()

	items := make([]any, 5000)
	for i := range items {
		items[i] = serverItem(uuid.NewString())
	}
	body, err := json.Marshal(items)
	if err != nil {
		b.Fatal(err)
	}

	b.ResetTimer()
	for b.Loop() {
		request, _ := http.NewRequest(http.MethodPost, fake.URL()+ofb.ReportPath, bytes.NewReader(body))
		request.Header.Set("Authorization", "Bearer "+token.AccessToken)
		request.Header.Set("Content-Type", "application/json")
		response, err := client.Do(request)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, response.Body)
		response.Body.Close()
		if response.StatusCode != http.StatusOK {
			b.Fatal(fmt.Sprintf("status %d", response.StatusCode))
		}
	}
	if violations := fake.Violations(); len(violations) > 0 {
		b.Fatal(strings.Join(violations, "\n"))
	}
}
