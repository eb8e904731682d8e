package webhook

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Defaults of Config.
const (
	// ConsumerName is the durable JetStream consumer of the fan-out, also its
	// key in consumer_idempotency.
	ConsumerName = "webhooks"

	// QueueName is the River queue of delivery jobs.
	QueueName = "webhooks"

	DefaultEndpointConcurrency = 4
	DefaultMaxBodyBytes        = 1 << 20
	DefaultMaxRetryAfter       = time.Hour
	DefaultMaxWorkers          = 50
	DefaultRequestTimeout      = 15 * time.Second
	DefaultResponseBodyBytes   = 4 << 10
)

// Config configures the webhook extension. The zero value of each optional
// field means its default.
type Config struct {
	// AllowedPrefixes admits destination addresses that the dial-time check
	// would otherwise block, such as 127.0.0.1/32 for tests or a private
	// range for an on-premises customer. Empty means nothing is admitted.
	AllowedPrefixes []netip.Prefix

	// EndpointConcurrency is the most requests in flight to one endpoint URL
	// from this process. A delivery that finds the endpoint busy snoozes
	// without counting an attempt. Zero means DefaultEndpointConcurrency.
	EndpointConcurrency int

	// FetchPollInterval is how often the delivery queue polls for jobs that
	// became due, which bounds how late a retry or an ordering wait resumes.
	// Zero means River's default of one second.
	FetchPollInterval time.Duration

	// Logger receives structured logs. Nil discards them.
	Logger *slog.Logger

	// MaxBodyBytes caps a request body. An event whose body is larger is
	// dead-lettered at fan-out with no request sent. Zero means
	// DefaultMaxBodyBytes.
	MaxBodyBytes int

	// MaxRetryAfter caps how long a Retry-After header on a 429 or 503
	// response can postpone the next attempt. Zero means DefaultMaxRetryAfter.
	MaxRetryAfter time.Duration

	// MaxWorkers is the River queue's worker count in this process. Zero
	// means DefaultMaxWorkers.
	MaxWorkers int

	// Pool is the database used by the delivery workers. Required.
	Pool *pgxpool.Pool

	// RequestTimeout bounds one HTTP attempt from dial to the last byte of
	// the response read. Zero means DefaultRequestTimeout.
	RequestTimeout time.Duration

	// ResponseBodyBytes is how much of each response body is stored with the
	// attempt. Zero means DefaultResponseBodyBytes.
	ResponseBodyBytes int

	// Secrets decrypts the subscriptions' signing secrets. Required.
	Secrets *SecretBox

	// resolver and dial replace DNS resolution and the final TCP dial in
	// tests, so tests never send traffic beyond loopback.
	resolver resolver
	dial     dialFunc
}

func (c *Config) setDefaults() error {
	if c.Pool == nil {
		return errors.New("webhook: Config.Pool is required")
	}
	if c.Secrets == nil {
		return errors.New("webhook: Config.Secrets is required (set WEBHOOK_SECRET_KEY)")
	}
	if c.EndpointConcurrency == 0 {
		c.EndpointConcurrency = DefaultEndpointConcurrency
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.MaxRetryAfter == 0 {
		c.MaxRetryAfter = DefaultMaxRetryAfter
	}
	if c.MaxWorkers == 0 {
		c.MaxWorkers = DefaultMaxWorkers
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.ResponseBodyBytes == 0 {
		c.ResponseBodyBytes = DefaultResponseBodyBytes
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	for name, value := range map[string]int64{
		"EndpointConcurrency": int64(c.EndpointConcurrency),
		"MaxBodyBytes":        int64(c.MaxBodyBytes),
		"MaxRetryAfter":       int64(c.MaxRetryAfter),
		"MaxWorkers":          int64(c.MaxWorkers),
		"RequestTimeout":      int64(c.RequestTimeout),
		"ResponseBodyBytes":   int64(c.ResponseBodyBytes),
	} {
		if value < 0 {
			return fmt.Errorf("webhook: Config.%s is negative", name)
		}
	}
	return nil
}
