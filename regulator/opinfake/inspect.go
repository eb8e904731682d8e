package opinfake

import "maps"

// Seen returns how many times a fapiInteractionId arrived in batch requests
// that passed verification and spec validation, whatever the event's
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

// Accepted returns the accepted events in arrival order, each once.
func (s *Server) Accepted() []AcceptedEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]AcceptedEvent(nil), s.accepted...)
}

// Violations returns every rejected request with the reason, prefixed
// "request", and, unless Config.SkipResponseValidation is set, each response
// of the fake that failed validation, prefixed "response".
func (s *Server) Violations() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.violations...)
}

// Requests returns the number of batch requests received, including rejected
// ones.
func (s *Server) Requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests
}

// QueueFaults appends faults that the next batch requests receive, one per
// request in order, after verification and body decoding. A forced response
// stores nothing and counts nothing as seen.
func (s *Server) QueueFaults(faults ...Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, faults...)
}

// SetResponder installs a function that may force the response to each batch
// request for which no queued fault remains. nil removes it.
func (s *Server) SetResponder(responder Responder) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.responder = responder
}
