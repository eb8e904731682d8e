package webhook

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Retry limits. They bound what a subscription can configure, so no policy
// can retry for ever.
const (
	MaxAttemptsLimit = 20
	maxRetryDelay    = 24 * time.Hour
	maxJitter        = 0.5
)

// DefaultRetryDelays are the gaps after the first attempt: 8 attempts over
// about 27.6 hours before jitter.
var DefaultRetryDelays = []time.Duration{
	5 * time.Second,
	5 * time.Minute,
	30 * time.Minute,
	2 * time.Hour,
	5 * time.Hour,
	10 * time.Hour,
	10 * time.Hour,
}

// DefaultJitter is the default fraction by which each gap is randomly
// lengthened or shortened.
const DefaultJitter = 0.2

// RetryPolicy is a subscription's retry schedule, stored as JSON in
// webhook_subscriptions.retry_policy. The zero value means the defaults.
type RetryPolicy struct {
	// Delays are the gaps after each failed attempt, so the delivery gets
	// len(Delays)+1 attempts. Nil means DefaultRetryDelays; an empty,
	// non-nil slice means a single attempt.
	Delays []time.Duration

	// Jitter is the fraction, from 0 to 0.5, by which each gap is randomly
	// lengthened or shortened. Nil means DefaultJitter.
	Jitter *float64
}

type retryPolicyJSON struct {
	Delays []string `json:"delays,omitempty"`
	Jitter *float64 `json:"jitter,omitempty"`
}

// MarshalJSON writes delays as Go duration strings such as "5m0s".
func (p RetryPolicy) MarshalJSON() ([]byte, error) {
	out := retryPolicyJSON{Jitter: p.Jitter}
	if p.Delays != nil {
		out.Delays = make([]string, len(p.Delays))
		for i, delay := range p.Delays {
			out.Delays[i] = delay.String()
		}
	}
	return json.Marshal(out)
}

// UnmarshalJSON reads delays as Go duration strings.
func (p *RetryPolicy) UnmarshalJSON(data []byte) error {
	var in struct {
		Delays *[]string `json:"delays"`
		Jitter *float64  `json:"jitter"`
	}
	if err := json.Unmarshal(data, &in); err != nil {
		return err
	}
	p.Jitter = in.Jitter
	p.Delays = nil
	if in.Delays != nil {
		p.Delays = make([]time.Duration, len(*in.Delays))
		for i, text := range *in.Delays {
			delay, err := time.ParseDuration(text)
			if err != nil {
				return fmt.Errorf("retry delay %d %q: %w", i+1, text, err)
			}
			p.Delays[i] = delay
		}
	}
	return nil
}

// ParseRetryDelays reads a comma-separated list of durations such as
// "5s,5m,30m". An empty string returns nil, the defaults.
func ParseRetryDelays(text string) ([]time.Duration, error) {
	text = strings.TrimSpace(text)
	if text == "" {
		return nil, nil
	}
	var delays []time.Duration
	for _, part := range strings.Split(text, ",") {
		delay, err := time.ParseDuration(strings.TrimSpace(part))
		if err != nil {
			return nil, fmt.Errorf("retry delay %q is not a duration such as 30s or 5m", part)
		}
		delays = append(delays, delay)
	}
	return delays, nil
}

// Validate checks the policy against the retry limits.
func (p RetryPolicy) Validate() error {
	if len(p.Delays)+1 > MaxAttemptsLimit {
		return fmt.Errorf("retry policy has %d attempts, above the limit of %d", len(p.Delays)+1, MaxAttemptsLimit)
	}
	for i, delay := range p.Delays {
		if delay < 0 || delay > maxRetryDelay {
			return fmt.Errorf("retry delay %d is %s, want 0 to %s", i+1, delay, maxRetryDelay)
		}
	}
	if p.Jitter != nil && (*p.Jitter < 0 || *p.Jitter > maxJitter) {
		return fmt.Errorf("retry jitter is %g, want 0 to %g", *p.Jitter, maxJitter)
	}
	return nil
}

func (p RetryPolicy) delays() []time.Duration {
	if p.Delays == nil {
		return DefaultRetryDelays
	}
	return p.Delays
}

// MaxAttempts returns how many HTTP attempts a delivery gets.
func (p RetryPolicy) MaxAttempts() int { return len(p.delays()) + 1 }

// Delay returns the gap after failed attempt number attempt (from 1), with
// jitter, or false when that was the last attempt.
func (p RetryPolicy) Delay(attempt int) (time.Duration, bool) {
	delays := p.delays()
	if attempt < 1 || attempt > len(delays) {
		return 0, false
	}
	jitter := DefaultJitter
	if p.Jitter != nil {
		jitter = *p.Jitter
	}
	delay := delays[attempt-1]
	if jitter > 0 {
		// A factor in [1-jitter, 1+jitter).
		factor := 1 - jitter + 2*jitter*rand.Float64()
		delay = time.Duration(float64(delay) * factor)
	}
	return delay, true
}

// retryAfter returns the delay that a Retry-After header requests, as
// seconds or an HTTP date, or false when the header is absent or invalid.
func retryAfter(header http.Header, now time.Time) (time.Duration, bool) {
	value := strings.TrimSpace(header.Get("Retry-After"))
	if value == "" {
		return 0, false
	}
	if seconds, err := strconv.ParseInt(value, 10, 64); err == nil {
		if seconds < 0 {
			return 0, false
		}
		if seconds > int64(maxRetryDelay/time.Second) {
			return maxRetryDelay, true
		}
		return time.Duration(seconds) * time.Second, true
	}
	if at, err := http.ParseTime(value); err == nil {
		return max(at.Sub(now), 0), true
	}
	return 0, false
}

// nextDelay returns the gap before the attempt after failed attempt number
// attempt, or false when no attempt is left. On 429 and 503 a Retry-After
// header can lengthen the scheduled gap up to maxRetryAfter but never
// shortens it, and never adds an attempt.
func nextDelay(policy RetryPolicy, attempt, status int, header http.Header, now time.Time,
	maxRetryAfter time.Duration) (time.Duration, bool) {
	delay, ok := policy.Delay(attempt)
	if !ok {
		return 0, false
	}
	if status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable {
		if asked, ok := retryAfter(header, now); ok {
			delay = max(delay, min(asked, maxRetryAfter))
		}
	}
	return delay, true
}

// parseRetryPolicy decodes the retry_policy column; '{}' means the defaults.
func parseRetryPolicy(data []byte) (RetryPolicy, error) {
	var policy RetryPolicy
	if len(data) == 0 {
		return policy, nil
	}
	if err := json.Unmarshal(data, &policy); err != nil {
		return policy, fmt.Errorf("decode retry policy: %w", err)
	}
	return policy, nil
}
