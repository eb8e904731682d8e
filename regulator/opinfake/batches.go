package opinfake

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/google/uuid"

	"github.com/finnest/eventruntime/regulator"
	"github.com/finnest/eventruntime/regulator/opin"
)

// maxBodyBytes bounds a request body. 5,000 signed events stay well below it.
const maxBodyBytes = 64 << 20

// batchBody is the decoded payload of a batch request.
type batchBody struct {
	Events         []json.RawMessage `json:"events"`
	OrganisationID string            `json:"organisationId"`
}

// eventResult is one entry of a batch response: the spec's "success" schema
// for status 200, and its "response400" schema for status 207.
type eventResult struct {
	CorrelationID string `json:"correlationId,omitempty"`
	Message       string `json:"message,omitempty"`
	ReportID      string `json:"reportId,omitempty"`
	Status        string `json:"status"`
}

// handleBatch serves a batch path for role. The checks run in this order:
// Content-Type (415), body size (413), JWS header, key and signature (401),
// payload is a batchBody object (400), the kid belongs to the body's
// organisationId (401), queued fault or responder, event count (413), spec
// validation (400), then the per-event rules (207 with DISCARDED entries).
func (s *Server) handleBatch(role string) http.HandlerFunc {
	path := opin.BatchPath(role)
	return func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.requests++
		s.mu.Unlock()
		reject := func(status int, message, reason string) {
			s.addViolation(fmt.Sprintf("request POST %s: %d: %s", path, status, reason))
			writeMessage(w, status, message)
		}

		mediaType, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
		if err != nil || mediaType != "application/jwt" {
			reject(http.StatusUnsupportedMediaType, "Unsupported media type",
				fmt.Sprintf("Content-Type %q, want application/jwt", r.Header.Get("Content-Type")))
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
		if err != nil {
			var tooLarge *http.MaxBytesError
			if errors.As(err, &tooLarge) {
				reject(http.StatusRequestEntityTooLarge, "Payload too large", err.Error())
				return
			}
			reject(http.StatusBadRequest, "Could not read the request body", err.Error())
			return
		}

		verified, err := s.verify([]byte(strings.TrimSpace(string(body))))
		if err != nil {
			reject(http.StatusUnauthorized, "Unauthorized", err.Error())
			return
		}
		var batch batchBody
		if err := json.Unmarshal(verified.payload, &batch); err != nil {
			reject(http.StatusBadRequest, "Invalid payload format: MUST be a batch object with an events array",
				"payload does not decode: "+err.Error())
			return
		}
		if batch.OrganisationID != verified.key.organisationID {
			reject(http.StatusUnauthorized, "Unauthorized",
				fmt.Sprintf("kid %q is registered to another organisation than organisationId %q",
					verified.keyID, batch.OrganisationID))
			return
		}

		if s.applyFault(w, r, batch.Events) {
			return
		}
		if len(batch.Events) > opin.MaxBatchSize {
			reject(http.StatusRequestEntityTooLarge, "Record limit exceeded",
				fmt.Sprintf("%d events, limit %d", len(batch.Events), opin.MaxBatchSize))
			return
		}
		// NOTE: the spec sets no minItems on events. The fake rejects an
		// empty array, but the real platform's answer to one is unknown.
		if len(batch.Events) == 0 {
			reject(http.StatusBadRequest, "Invalid payload format: events MUST not be empty", "no events")
			return
		}
		if err := s.validateBatch(verified.payload); err != nil {
			reject(http.StatusBadRequest, "Invalid payload: "+err.Error(), err.Error())
			return
		}

		results := s.judgeEvents(role, verified, batch)
		status := http.StatusOK
		for _, result := range results {
			if result.Status != regulator.StatusAccepted {
				status = http.StatusMultiStatus
				break
			}
		}
		if status == http.StatusMultiStatus {
			// The 207 schema (response400) has no reportId and requires a
			// message.
			for i := range results {
				results[i].ReportID = ""
				if results[i].Message == "" {
					results[i].Message = "Accepted"
				}
			}
		}
		s.writeValidated(w, path, status, results)
	}
}

// validateBatch validates a decoded payload against the spec's batchBody
// schema, which includes eventBody for every event.
func (s *Server) validateBatch(payload []byte) error {
	var value any
	if err := json.Unmarshal(payload, &value); err != nil {
		return err
	}
	return s.spec.BatchSchema().VisitJSON(value, openapi3.MultiErrors(), openapi3.DisableSchemaErrorDetails())
}

// judgeEvents applies the per-event rules, stores the accepted events and
// counts every fapiInteractionId as seen. An event whose idempotency key
// (fapiInteractionId, correlationId, serverASId, clientSSId, timestamp and
// role) was accepted before is accepted again with the first reportId and
// not stored twice.
//
// NOTE: the spec names those key fields but not the platform's answer to a
// duplicate; accepting it again is this fake's choice.
func (s *Server) judgeEvents(role string, verified *verifiedRequest, batch batchBody) []eventResult {
	now := s.now()
	results := make([]eventResult, len(batch.Events))

	s.mu.Lock()
	defer s.mu.Unlock()
	for i, raw := range batch.Events {
		var event opin.Event
		// The schema check passed, so the event decodes.
		_ = json.Unmarshal(raw, &event)
		if event.FAPIInteractionID != "" {
			s.seen[event.FAPIInteractionID]++
		}
		results[i] = eventResult{CorrelationID: event.CorrelationID, Status: regulator.StatusAccepted}

		if reason := checkEvent(role, batch.OrganisationID, event); reason != "" {
			results[i].Status = regulator.StatusDiscarded
			results[i].Message = reason
			continue
		}
		key := strings.Join([]string{event.FAPIInteractionID, event.CorrelationID, event.ServerASID,
			event.ClientSSID, event.Timestamp, role}, "|")
		if reportID, ok := s.acceptedKey[key]; ok {
			results[i].ReportID = reportID
			continue
		}
		results[i].ReportID = uuid.NewString()
		s.acceptedKey[key] = results[i].ReportID
		s.accepted = append(s.accepted, AcceptedEvent{
			Event:          event,
			KeyID:          verified.keyID,
			OrganisationID: batch.OrganisationID,
			ReceivedAt:     now,
			ReportID:       results[i].ReportID,
			Role:           role,
		})
	}
	return results
}

// checkEvent returns the reason to discard a schema-valid event, or "". The
// organisation of the body must be the event's server for SERVER events and
// its client for CLIENT events.
func checkEvent(role, organisationID string, event opin.Event) string {
	if err := opin.CheckEventRules(event); err != nil {
		return "Invalid event: " + err.Error()
	}
	reporter := event.ServerOrgID
	if role == opin.RoleClient {
		reporter = event.ClientOrgID
	}
	if reporter != organisationID {
		return fmt.Sprintf("organisationId does not match the %s organisation of the event", role)
	}
	return ""
}

// applyFault writes the next queued fault or the responder's fault, after
// any delay. It returns true when it wrote a response.
func (s *Server) applyFault(w http.ResponseWriter, r *http.Request, events []json.RawMessage) bool {
	s.mu.Lock()
	var fault *Fault
	if len(s.faults) > 0 {
		fault = &s.faults[0]
		s.faults = s.faults[1:]
	}
	responder := s.responder
	s.mu.Unlock()

	if fault == nil && responder != nil {
		fault = responder(r, events)
	}
	if fault == nil {
		return false
	}
	if fault.Delay > 0 {
		select {
		case <-time.After(fault.Delay):
		case <-r.Context().Done():
			return true
		}
	}
	if fault.Status == 0 {
		return false
	}

	if fault.Body != nil {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(fault.Status)
		_, _ = w.Write(fault.Body)
		return true
	}
	message := fault.Message
	if message == "" {
		message = http.StatusText(fault.Status)
	}
	writeMessage(w, fault.Status, message)
	return true
}

// writeValidated sends a JSON response after validating it against the
// operation's response schema for status, recording a failure as a
// violation.
func (s *Server) writeValidated(w http.ResponseWriter, path string, status int, body any) {
	encoded, err := json.Marshal(body)
	if err != nil {
		writeMessage(w, http.StatusInternalServerError, "Internal Server Error")
		return
	}
	if !s.skipResponseValidation {
		if err := s.validateResponse(path, status, encoded); err != nil {
			s.addViolation(fmt.Sprintf("response %d to POST %s: %v", status, path, err))
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(encoded)
}

func (s *Server) validateResponse(path string, status int, encoded []byte) error {
	item := s.spec.Doc.Paths.Value(path)
	if item == nil || item.Post == nil {
		return fmt.Errorf("spec has no POST %s", path)
	}
	response := item.Post.Responses.Status(status)
	if response == nil || response.Value == nil {
		return fmt.Errorf("spec defines no response %d", status)
	}
	media := response.Value.Content.Get("application/json")
	if media == nil || media.Schema == nil {
		return fmt.Errorf("spec response %d has no application/json schema", status)
	}
	var value any
	if err := json.Unmarshal(encoded, &value); err != nil {
		return err
	}
	return media.Schema.Value.VisitJSON(value, openapi3.MultiErrors(), openapi3.DisableSchemaErrorDetails())
}

func writeMessage(w http.ResponseWriter, status int, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"message": message})
}

func (s *Server) addViolation(violation string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.violations = append(s.violations, violation)
}
