package ofb

import (
	"errors"
	"fmt"
	"time"
)

// Errors that Client methods wrap, for errors.Is.
var (
	// ErrBatchSize marks a PostReports call with no reports or more than
	// MaxBatchSize. Nothing was sent.
	ErrBatchSize = errors.New("invalid PCM report batch size")

	// ErrResponseMismatch marks a 200 or 207 response whose result array
	// does not have one entry per report sent. The PCM may have stored some
	// of the reports.
	ErrResponseMismatch = errors.New("PCM response does not match the request")

	// ErrTransport marks a request that got no HTTP response, such as a
	// refused connection or a timeout. Whether the PCM stored the reports is
	// unknown.
	ErrTransport = errors.New("PCM request failed")
)

// StatusError is a PCM or token endpoint response with a status other than
// 200 or 207.
type StatusError struct {
	// Message is the "message" field of the error body, or the start of the
	// body when it has none.
	Message string

	// Operation names the call, such as "POST report" or "POST /token/".
	Operation string

	// RetryAfter is the parsed Retry-After header, or 0 when absent.
	RetryAfter time.Duration

	// StatusCode is the HTTP status.
	StatusCode int
}

func (e *StatusError) Error() string {
	text := fmt.Sprintf("PCM %s: HTTP %d", e.Operation, e.StatusCode)
	if e.Message != "" {
		text += ": " + e.Message
	}
	if e.RetryAfter > 0 {
		text += fmt.Sprintf(" (retry after %s)", e.RetryAfter)
	}
	return text
}

// Temporary reports whether the same request may succeed later: 401 after a
// token refresh, 429 and 5xx after a wait.
func (e *StatusError) Temporary() bool {
	return e.StatusCode == 401 || e.StatusCode == 429 || e.StatusCode >= 500
}
