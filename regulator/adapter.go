// Package regulator holds what every regulator adapter shares: the Adapter
// interface the map and submit jobs call, its result types, and the official
// specifications the adapters and their fakes are checked against.
package regulator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/tenant"
)

// Item statuses a regulator returns per report item.
const (
	StatusAccepted  = "ACCEPTED"
	StatusDiscarded = "DISCARDED"
)

// Errors adapters wrap, for errors.Is.
var (
	// ErrInvalidItem marks an interaction or item that the regulator would
	// reject whatever the time, so it is quarantined and never sent.
	ErrInvalidItem = errors.New("invalid report item")

	// ErrItemExpired marks an item whose timestamp left the regulator's
	// acceptance window, so it is quarantined and never sent.
	ErrItemExpired = errors.New("report item outside the regulator's time window")

	// ErrLookupUnsupported is returned by Lookup when the regulator has no
	// read-back operation.
	ErrLookupUnsupported = errors.New("regulator has no read-back operation")
)

// Adapter is one ecosystem's regulator: it maps interactions to report items
// in the regulator's format and posts them on a tenant's behalf. All
// regulator-specific code lives behind it.
type Adapter interface {
	// Map builds the report item of an interaction. An error wrapping
	// ErrInvalidItem means the interaction can never become a valid item.
	Map(in outbox.Interaction) (json.RawMessage, error)

	// Check validates an item just before it is sent, at now. An error
	// wrapping ErrInvalidItem or ErrItemExpired means the item must not be
	// sent.
	Check(item json.RawMessage, now time.Time) error

	// Report posts items, each a report body in the regulator's format, in
	// one request. On a 2xx response it returns one ItemResult per item in
	// request order. Any other outcome is an error, which is a *StatusError
	// when the regulator responded.
	Report(ctx context.Context, tenant *tenant.Config, items []json.RawMessage) (*Result, error)

	// Lookup reads back whether the regulator holds the item with the given
	// interaction id, and its report id when it returns one. It returns an
	// error wrapping ErrLookupUnsupported when the regulator cannot tell.
	Lookup(ctx context.Context, tenant *tenant.Config, item json.RawMessage) (found bool, reportID string, err error)
}

// Result is a regulator's response to one report request.
type Result struct {
	// Items holds one result per request item, in request order.
	Items []ItemResult

	// RequestBody is the exact body sent, for evidence.
	RequestBody []byte

	// StatusCode is the HTTP status, 200 or 207.
	StatusCode int
}

// ItemResult is the regulator's verdict on one report item.
type ItemResult struct {
	CorrelationID string
	Message       string
	ReportID      string
	Status        string
}

// StatusError is a non-2xx response from a regulator.
type StatusError struct {
	Message    string
	RetryAfter time.Duration
	StatusCode int
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("regulator responded with HTTP %d: %s", e.StatusCode, e.Message)
}

// AsStatusError returns the *StatusError in err's chain, or nil.
func AsStatusError(err error) *StatusError {
	var statusErr *StatusError
	if errors.As(err, &statusErr) {
		return statusErr
	}
	return nil
}
