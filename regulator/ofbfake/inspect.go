package ofbfake

import (
	"maps"
	"time"

	"github.com/finnest/eventruntime/regulator/ofb"
)

// Seen returns how many times a fapiInteractionId arrived in report requests
// that passed authentication and spec validation, whatever the item's
// verdict.
func (s *Server) Seen(fapiInteractionID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen[fapiInteractionID]
}

// SeenCounts returns a copy of the Seen count of every fapiInteractionId.
func (s *Server) SeenCounts() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.seen)
}

// Accepted returns the accepted reports in arrival order.
func (s *Server) Accepted() []ofb.Report {
	s.mu.Lock()
	defer s.mu.Unlock()
	reports := make([]ofb.Report, len(s.accepted))
	for i, stored := range s.accepted {
		reports[i] = stored.report
	}
	return reports
}

// Violations returns the spec violations seen so far: each rejected request
// and, unless Config.SkipResponseValidation is set, each response of the fake
// that failed validation (prefixed "response").
func (s *Server) Violations() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.violations...)
}

// Requests returns the number of report API requests received, including
// rejected ones.
func (s *Server) Requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests
}

// TokenRequests returns the number of token requests received on /token/
// and /token-fresh/ together, including rejected ones.
func (s *Server) TokenRequests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tokenRequests
}

// FreshTokenRequests returns the number of requests received on
// /token-fresh/, including rejected ones.
func (s *Server) FreshTokenRequests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.freshTokenRequests
}

// QueueFaults appends faults that the next report API requests receive, one
// per request in order, after authentication and body parsing. A forced
// response stores nothing and counts nothing as seen.
func (s *Server) QueueFaults(faults ...Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, faults...)
}

// SetResponder installs a function that may force the response to each report
// API request for which no queued fault remains. nil removes it.
func (s *Server) SetResponder(responder Responder) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.responder = responder
}

// RevokeTokens deletes every issued access token, so report API requests
// get 401 until the client fetches a new token.
func (s *Server) RevokeTokens() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.tokens)
}

// TokenExpiry returns the expiry of an issued access token, for tests of
// token caching. ok is false for an unknown token.
func (s *Server) TokenExpiry(token string) (expiry time.Time, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	issued, ok := s.tokens[token]
	return issued.expiry, ok
}

// AcceptedCount returns the number of accepted reports, counting a report
// accepted twice as two.
func (s *Server) AcceptedCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.accepted)
}

// AcceptedAt returns when the fake first accepted a report with the
// fapiInteractionId: the time its request was judged, before the response
// was written. ok is false when no report with the id was accepted.
func (s *Server) AcceptedAt(fapiInteractionID string) (at time.Time, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	indexes := s.acceptedByID[fapiInteractionID]
	if len(indexes) == 0 {
		return time.Time{}, false
	}
	return s.accepted[indexes[0]].createdAt, true
}
