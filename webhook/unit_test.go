package webhook

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
	"github.com/stretchr/testify/require"
)

func mustSecret(t *testing.T) string {
	t.Helper()
	secret, err := NewSecret()
	require.NoError(t, err)
	return secret
}

func TestSignatureVerifiesWithUpstreamLibrary(t *testing.T) {
	t.Parallel()
	first, second, expired := mustSecret(t), mustSecret(t), mustSecret(t)
	now := time.Now()
	secrets := []Secret{
		{Value: expired, ExpiresAt: now.Add(-time.Minute)},
		{Value: first, ExpiresAt: now.Add(time.Hour)},
		{Value: second},
	}
	body := []byte(`{"type":"claim.approved","data":{"amount":"12.50","note":"ação"}}`)
	header := http.Header{}
	require.NoError(t, setSignedHeaders(header, secrets, "01a241cf-7db9-7149-8ff2-a6ed9bc0b23d", now, body))

	require.Len(t, strings.Fields(header.Get(HeaderSignature)), 2, "one entry per active secret")
	for _, secret := range []string{first, second} {
		verifier, err := standardwebhooks.NewWebhook(secret)
		require.NoError(t, err)
		require.NoError(t, verifier.Verify(body, header))
	}
	verifier, err := standardwebhooks.NewWebhook(expired)
	require.NoError(t, err)
	require.ErrorIs(t, verifier.Verify(body, header), standardwebhooks.ErrNoMatchingSignature,
		"an expired secret no longer signs")

	tampered := append([]byte(nil), body...)
	tampered[10] = 'X'
	verifier, _ = standardwebhooks.NewWebhook(first)
	require.ErrorIs(t, verifier.Verify(tampered, header), standardwebhooks.ErrNoMatchingSignature)
}

func TestSignatureNeedsActiveSecret(t *testing.T) {
	t.Parallel()
	secrets := []Secret{{Value: mustSecret(t), ExpiresAt: time.Now().Add(-time.Second)}}
	err := setSignedHeaders(http.Header{}, secrets, "id", time.Now(), []byte("{}"))
	require.ErrorIs(t, err, errNoActiveSecret)
}

func TestParseSecret(t *testing.T) {
	t.Parallel()
	_, err := ParseSecret(mustSecret(t))
	require.NoError(t, err)
	for _, bad := range []string{"", "secret", "whsec_!!!", "whsec_" + strings.Repeat("A", 8), "whsec_" + strings.Repeat("A", 100)} {
		_, err := ParseSecret(bad)
		require.ErrorIs(t, err, ErrInvalidSecret, bad)
	}
}

func TestSecretBox(t *testing.T) {
	t.Parallel()
	key := make([]byte, 32)
	key[0] = 1
	box, err := NewSecretBox(key)
	require.NoError(t, err)
	secrets := []Secret{{Value: mustSecret(t), CreatedAt: time.Now().UTC().Truncate(time.Second)}}

	sealed, err := box.seal("sub-1", secrets)
	require.NoError(t, err)
	require.NotContains(t, string(sealed), secrets[0].Value[6:], "ciphertext must not contain the secret")

	opened, err := box.open("sub-1", sealed)
	require.NoError(t, err)
	require.Equal(t, secrets, opened)

	_, err = box.open("sub-2", sealed)
	require.ErrorContains(t, err, "decrypt", "sealed data is bound to its subscription")

	otherKey := make([]byte, 32)
	other, err := NewSecretBox(otherKey)
	require.NoError(t, err)
	_, err = other.open("sub-1", sealed)
	require.ErrorContains(t, err, "wrong WEBHOOK_SECRET_KEY")

	_, err = NewSecretBox(make([]byte, 16))
	require.ErrorContains(t, err, "want 32")
	_, err = ParseSecretKey("not base64 !")
	require.ErrorContains(t, err, "not base64")
	_, err = ParseSecretKey("AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
	require.NoError(t, err)
}

func TestDefaultRetrySchedule(t *testing.T) {
	t.Parallel()
	var policy RetryPolicy
	require.Equal(t, 8, policy.MaxAttempts())
	var total time.Duration
	for _, delay := range DefaultRetryDelays {
		total += delay
	}
	require.InDelta(t, 27.6, total.Hours(), 0.1, "about a day")
	for i := 1; i < len(DefaultRetryDelays); i++ {
		require.GreaterOrEqual(t, DefaultRetryDelays[i], DefaultRetryDelays[i-1], "gaps do not shrink")
	}

	for attempt := 1; attempt <= 7; attempt++ {
		base := DefaultRetryDelays[attempt-1]
		for range 50 {
			delay, ok := policy.Delay(attempt)
			require.True(t, ok)
			require.GreaterOrEqual(t, delay, time.Duration(float64(base)*(1-DefaultJitter)))
			require.Less(t, delay, time.Duration(float64(base)*(1+DefaultJitter)))
		}
	}
	_, ok := policy.Delay(8)
	require.False(t, ok, "no retry after the last attempt")
}

func TestRetryPolicyOverride(t *testing.T) {
	t.Parallel()
	zero := 0.0
	policy := RetryPolicy{Delays: []time.Duration{time.Second, time.Minute}, Jitter: &zero}
	require.Equal(t, 3, policy.MaxAttempts())
	delay, ok := policy.Delay(2)
	require.True(t, ok)
	require.Equal(t, time.Minute, delay)

	encoded, err := json.Marshal(policy)
	require.NoError(t, err)
	require.JSONEq(t, `{"delays":["1s","1m0s"],"jitter":0}`, string(encoded))
	decoded, err := parseRetryPolicy(encoded)
	require.NoError(t, err)
	require.Equal(t, policy, decoded)

	defaults, err := parseRetryPolicy([]byte(`{}`))
	require.NoError(t, err)
	require.Equal(t, 8, defaults.MaxAttempts())

	single, err := parseRetryPolicy([]byte(`{"delays":[]}`))
	require.NoError(t, err)
	require.Equal(t, 1, single.MaxAttempts(), "an empty list means one attempt")

	require.ErrorContains(t, RetryPolicy{Delays: make([]time.Duration, MaxAttemptsLimit)}.Validate(), "above the limit")
	require.ErrorContains(t, RetryPolicy{Delays: []time.Duration{48 * time.Hour}}.Validate(), "want 0 to")
	big := 0.9
	require.ErrorContains(t, RetryPolicy{Jitter: &big}.Validate(), "jitter")
}

func TestRetryAfterHonouredButClamped(t *testing.T) {
	t.Parallel()
	zero := 0.0
	policy := RetryPolicy{Delays: []time.Duration{10 * time.Second, 10 * time.Second}, Jitter: &zero}
	now := time.Date(2025, 3, 14, 9, 0, 0, 0, time.UTC)
	after := func(value string) http.Header { return http.Header{"Retry-After": {value}} }

	cases := []struct {
		name   string
		status int
		header http.Header
		want   time.Duration
	}{
		{"TooManyRequestsSeconds", 429, after("120"), 120 * time.Second},
		{"ServiceUnavailableDate", 503, after(now.Add(5 * time.Minute).Format(http.TimeFormat)), 5 * time.Minute},
		{"ClampedToMaximum", 429, after("86400"), time.Hour},
		{"NeverShorterThanSchedule", 503, after("1"), 10 * time.Second},
		{"IgnoredOnOtherStatus", 500, after("120"), 10 * time.Second},
		{"InvalidIgnored", 429, after("soon"), 10 * time.Second},
		{"NegativeIgnored", 429, after("-5"), 10 * time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			delay, ok := nextDelay(policy, 1, tc.status, tc.header, now, time.Hour)
			require.True(t, ok)
			require.Equal(t, tc.want, delay)
		})
	}

	_, ok := nextDelay(policy, 3, 429, after("5"), now, time.Hour)
	require.False(t, ok, "Retry-After never adds an attempt")
}

func TestSubscriptionMatches(t *testing.T) {
	t.Parallel()
	sub := Subscription{EventTypes: []string{"claim.*", "account.closed"}}
	require.True(t, sub.Matches("claim.approved"))
	require.True(t, sub.Matches("claim.payment.sent"))
	require.True(t, sub.Matches("account.closed"))
	require.False(t, sub.Matches("claims.approved"))
	require.False(t, sub.Matches("account.opened"))
	require.True(t, (&Subscription{EventTypes: []string{"*"}}).Matches("anything"))
}

func TestValidateSubscriptionFields(t *testing.T) {
	t.Parallel()
	require.NoError(t, validateURL("https://hooks.example.com/in?token=x", nil))
	for _, bad := range []string{
		"ftp://example.com", "https://", "https://user:pass@example.com/", "https://example.com/#frag",
		"http://10.0.0.8/hook", "http://[::ffff:127.0.0.1]/", "http://169.254.169.254/",
	} {
		require.ErrorIs(t, validateURL(bad, nil), ErrInvalidSubscription, bad)
	}
	require.NoError(t, validateEventTypes([]string{"claim.approved", "claim.*", "*"}))
	for _, bad := range [][]string{nil, {""}, {"claim*"}, {"*.approved"}, {" claim.approved"}} {
		require.ErrorIs(t, validateEventTypes(bad), ErrInvalidSubscription, bad)
	}
}

func TestBackoffBounds(t *testing.T) {
	t.Parallel()
	for snoozes := range 20 {
		wait := backoff(500*time.Millisecond, snoozes, 30*time.Second)
		require.GreaterOrEqual(t, wait, 500*time.Millisecond)
		require.LessOrEqual(t, wait, 30*time.Second+30*time.Second/4)
	}
}

func TestStatusClass(t *testing.T) {
	t.Parallel()
	require.Equal(t, "2xx", statusClass(204))
	require.Equal(t, "4xx", statusClass(410))
	require.Equal(t, "none", statusClass(0))
}
