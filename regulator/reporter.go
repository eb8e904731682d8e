// Package regulator holds what every regulator adapter shares: the Reporter
// interface the submit job calls, its result types, and the official
// specifications the adapters and their fakes are checked against.
package regulator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/finnest/eventruntime/tenant"
)

// Item statuses a regulator returns per report item.
const (
	StatusAccepted  = "ACCEPTED"
	StatusDiscarded = "DISCARDED"
)

// Reporter posts report items to one ecosystem's regulator on a tenant's
// behalf.
type Reporter interface {
	// Report posts items, each a report body in the regulator's format, in
	// one request. On a 2xx answer it returns one ItemResult per item in
	// request order. Any other outcome is an error; a *StatusError when the
	// regulator answered.
	Report(ctx context.Context, tenant *tenant.Config, items []json.RawMessage) (*Result, error)
}

// Result is a regulator's answer to one report request.
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

// StatusError is a non-2xx answer from a regulator.
type StatusError struct {
	Message    string
	RetryAfter time.Duration
	StatusCode int
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("regulator answered %d: %s", e.StatusCode, e.Message)
}

// AsStatusError returns the *StatusError in err's chain, or nil.
func AsStatusError(err error) *StatusError {
	var statusErr *StatusError
	if errors.As(err, &statusErr) {
		return statusErr
	}
	return nil
}
