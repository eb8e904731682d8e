package ofbfake

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/google/uuid"

	"github.com/finnest/eventruntime/regulator/ofb"
)

// maxBodyBytes bounds a report request body. 5,000 reports with a large
// additionalInfo stay well below it.
const maxBodyBytes = 64 << 20

// itemResult is one entry of the spec's ReportResponse array.
type itemResult struct {
	ReportID      string `json:"reportId"`
	Status        string `json:"status"`
	CorrelationID string `json:"correlationId,omitempty"`
	Message       string `json:"message,omitempty"`
}

// itemFields are the fields of a report item that the per-item checks read,
// with the timestamp as sent.
type itemFields struct {
	ClientOrgID       string `json:"clientOrgId"`
	CorrelationID     string `json:"correlationId"`
	Endpoint          string `json:"endpoint"`
	FAPIInteractionID string `json:"fapiInteractionId"`
	Role              string `json:"role"`
	ServerOrgID       string `json:"serverOrgId"`
	Timestamp         string `json:"timestamp"`
}

// handlePostReports serves POST /report-api/v1/private/report/. The checks
// run in this order: bearer token (401), Content-Type (415), JSON array (400),
// queued fault or responder, item count (413), spec validation (400), then
// the per-item rules.
func (s *Server) handlePostReports(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.requests++
	s.mu.Unlock()

	token, ok := s.authorize(w, r)
	if !ok {
		return
	}
	mediaType, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mediaType != "application/json" {
		writeMessage(w, http.StatusUnsupportedMediaType, "Unsupported Media Type")
		return
	}

	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			writeMessage(w, http.StatusRequestEntityTooLarge, "Request body too large")
			return
		}
		writeMessage(w, http.StatusBadRequest, "Could not read the request body")
		return
	}
	var items []json.RawMessage
	if err := json.Unmarshal(body, &items); err != nil {
		writeMessage(w, http.StatusBadRequest, "Invalid payload format: MUST be an array")
		return
	}

	handled, loseResponse := s.applyFault(w, r, items)
	if handled {
		return
	}
	if loseResponse {
		original := w
		w = httptest.NewRecorder()
		defer closeWithoutResponse(original)
	}
	if len(items) > ofb.MaxBatchSize {
		writeMessage(w, http.StatusRequestEntityTooLarge, "Record limit exceeded")
		return
	}
	// NOTE: the spec sets no minItems. The fake rejects an empty array
	// because a batch of 1 to 5,000 items is documented, but the real PCM's
	// response to [] is unknown.
	if len(items) == 0 {
		writeMessage(w, http.StatusBadRequest, "Invalid payload format: MUST be a non-empty array")
		return
	}

	input := s.requestInput(s.postRoute, r, body, nil)
	if err := s.validateRequest(input); err != nil {
		s.addViolation(fmt.Sprintf("request POST %s: %v", ofb.ReportPath, err))
		writeMessage(w, http.StatusBadRequest, "Invalid report: "+err.Error())
		return
	}

	results := s.judgeItems(token, items)
	status := http.StatusOK
	for _, result := range results {
		if result.Status == ofb.StatusDiscarded {
			status = http.StatusMultiStatus
			break
		}
	}
	s.writeValidated(w, input, status, results)
}

// validateRequest validates a report request against the spec unless
// Config.SkipRequestValidation is set.
func (s *Server) validateRequest(input *openapi3filter.RequestValidationInput) error {
	if s.skipRequestValidation {
		return nil
	}
	return openapi3filter.ValidateRequest(input.Request.Context(), input)
}

// judgeItems applies the per-item rules, stores the accepted items and
// counts every fapiInteractionId as seen.
func (s *Server) judgeItems(token issuedToken, items []json.RawMessage) []itemResult {
	now := s.now()
	results := make([]itemResult, len(items))
	accepted := make([]storedReport, 0, len(items))
	fapiIDs := make([]string, 0, len(items))

	for i, raw := range items {
		var fields itemFields
		var report ofb.Report
		message := ""
		if err := json.Unmarshal(raw, &fields); err != nil {
			message = "Invalid item"
		} else if err := json.Unmarshal(raw, &report); err != nil {
			message = "Invalid timestamp"
		} else {
			message = s.checkItem(token, fields, report, now)
		}
		if fields.FAPIInteractionID != "" {
			fapiIDs = append(fapiIDs, fields.FAPIInteractionID)
		}

		results[i] = itemResult{
			ReportID:      uuid.NewString(),
			Status:        ofb.StatusAccepted,
			CorrelationID: fields.CorrelationID,
		}
		if message != "" {
			results[i].Status = ofb.StatusDiscarded
			results[i].Message = cleanMessage(message)
			continue
		}
		accepted = append(accepted, storedReport{
			createdAt: now,
			raw:       raw,
			report:    report,
			reportID:  results[i].ReportID,
		})
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range fapiIDs {
		s.seen[id]++
	}
	for _, stored := range accepted {
		s.acceptedByID[stored.report.FAPIInteractionID] = append(
			s.acceptedByID[stored.report.FAPIInteractionID], len(s.accepted))
		s.accepted = append(s.accepted, stored)
	}
	return results
}

// checkItem returns the reason to discard a spec-valid item, or "".
func (s *Server) checkItem(token issuedToken, fields itemFields, report ofb.Report, now time.Time) string {
	reporter := fields.ServerOrgID
	if fields.Role == ofb.RoleClient {
		reporter = fields.ClientOrgID
	}
	if reporter != token.orgID {
		return fmt.Sprintf("The organisation of the access token does not match the %s organisation of the report",
			fields.Role)
	}

	// The spec describes the format as YYYY-MM-DDTHH:mm:ss.sssZ. Its schema
	// only requires date-time, so the fake discards other forms instead of
	// rejecting the whole request.
	if len(fields.Timestamp) != len(ofb.TimestampLayout) ||
		report.Timestamp.Format(ofb.TimestampLayout) != fields.Timestamp {
		return "Invalid timestamp format, want UTC with milliseconds: YYYY-MM-DDTHH:mm:ss.sssZ"
	}
	if err := ofb.CheckReport(report, now); err != nil {
		if errors.Is(err, ofb.ErrReportTooOld) {
			return "Report timestamp is older than 7 days"
		}
		return "Report timestamp is more than 5 minutes in the future"
	}

	if !s.allowlist.Contains(fields.Endpoint) {
		return "Endpoint is not accepted by the PCM"
	}
	return ""
}

// handleGetReport serves GET /report-api/v1/private/report/{id}. It returns
// the newest accepted report with that id in which the caller's organisation
// is client or server, as a ReportModel with the report fields added.
func (s *Server) handleGetReport(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.requests++
	s.mu.Unlock()

	token, ok := s.authorize(w, r)
	if !ok {
		return
	}
	if handled, _ := s.applyFault(w, r, nil); handled {
		return
	}

	id := r.PathValue("fapiInteractionId")
	input := s.requestInput(s.getRoute, r, nil, map[string]string{"fapiInteractonId": id})
	model, found := s.reportModel(id, token.orgID)
	if !found {
		s.writeValidated(w, input, http.StatusNotFound, map[string]any{})
		return
	}
	s.writeValidated(w, input, http.StatusOK, model)
}

// reportModel builds the read-back body of a stored report. When reports of
// both roles were accepted under the id, the status is PAIRED if they agree
// on the shared fields and PAIRED_INCONSISTENT if not, with the other
// report's id in pairedReportId.
func (s *Server) reportModel(id, orgID string) (map[string]any, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()

	var own, counterpart *storedReport
	for _, index := range s.acceptedByID[id] {
		stored := &s.accepted[index]
		if stored.report.ClientOrgID != orgID && stored.report.ServerOrgID != orgID {
			continue
		}
		reporter := stored.report.ServerOrgID
		if stored.report.Role == ofb.RoleClient {
			reporter = stored.report.ClientOrgID
		}
		if reporter == orgID {
			own = stored
		} else {
			counterpart = stored
		}
	}
	if own == nil {
		own, counterpart = counterpart, nil
	}
	if own == nil {
		return nil, false
	}

	model := map[string]any{}
	if err := json.Unmarshal(own.raw, &model); err != nil {
		return nil, false
	}
	model["reportId"] = own.reportID
	model["status"] = ofb.StatusAccepted
	model["createdAt"] = own.createdAt.UTC().Format(ofb.TimestampLayout)
	model["updatedAt"] = own.createdAt.UTC().Format(ofb.TimestampLayout)
	if counterpart != nil && counterpart.report.Role != own.report.Role {
		model["pairedReportId"] = counterpart.reportID
		model["status"] = "PAIRED_INCONSISTENT"
		if reportsAgree(own.report, counterpart.report) {
			model["status"] = "PAIRED"
		}
	}
	return model, true
}

// reportsAgree compares the fields that a CLIENT and a SERVER report of one
// interaction share.
func reportsAgree(a, b ofb.Report) bool {
	return a.ClientOrgID == b.ClientOrgID && a.ServerOrgID == b.ServerOrgID &&
		a.Endpoint == b.Endpoint && a.HTTPMethod == b.HTTPMethod && a.StatusCode == b.StatusCode
}

// closeWithoutResponse drops the client's connection without writing a
// response.
func closeWithoutResponse(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	_ = conn.Close()
}

// applyFault writes the next queued fault or the responder's fault, after
// any delay. handled is true when it wrote a response; loseResponse is true
// when the request must be handled and its response dropped.
func (s *Server) applyFault(w http.ResponseWriter, r *http.Request, items []json.RawMessage) (handled, loseResponse bool) {
	s.mu.Lock()
	var fault *Fault
	if len(s.faults) > 0 {
		fault = &s.faults[0]
		s.faults = s.faults[1:]
	}
	responder := s.responder
	s.mu.Unlock()

	if fault == nil && responder != nil {
		fault = responder(r, items)
	}
	if fault == nil {
		return false, false
	}

	if fault.Delay > 0 {
		select {
		case <-time.After(fault.Delay):
		case <-r.Context().Done():
			return true, false
		}
	}
	if fault.LoseResponse {
		return false, true
	}
	if fault.Status == 0 {
		return false, false
	}

	if fault.RetryAfter != "" {
		w.Header().Set("Retry-After", fault.RetryAfter)
	}
	if fault.Body != nil {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(fault.Status)
		_, _ = w.Write(fault.Body)
		return true, false
	}
	message := fault.Message
	if message == "" {
		message = http.StatusText(fault.Status)
	}
	writeMessage(w, fault.Status, message)
	return true, false
}

func (s *Server) requestInput(route *routers.Route, r *http.Request, body []byte,
	pathParams map[string]string,
) *openapi3filter.RequestValidationInput {
	request := r.Clone(r.Context())
	request.Body = io.NopCloser(bytes.NewReader(body))
	request.ContentLength = int64(len(body))
	return &openapi3filter.RequestValidationInput{
		Options:    s.validationOptions,
		PathParams: pathParams,
		Request:    request,
		Route:      route,
	}
}

// writeValidated sends a JSON response after validating it against the
// spec, recording a failure as a violation.
func (s *Server) writeValidated(w http.ResponseWriter, input *openapi3filter.RequestValidationInput,
	status int, body any,
) {
	encoded, err := json.Marshal(body)
	if err != nil {
		writeMessage(w, http.StatusInternalServerError, "Internal Server Error")
		return
	}
	header := http.Header{"Content-Type": {"application/json"}}

	if !s.skipResponseValidation {
		err := openapi3filter.ValidateResponse(input.Request.Context(), &openapi3filter.ResponseValidationInput{
			Body:                   io.NopCloser(bytes.NewReader(encoded)),
			Header:                 header,
			Options:                s.validationOptions,
			RequestValidationInput: input,
			Status:                 status,
		})
		if err != nil {
			s.addViolation(fmt.Sprintf("response %d to %s %s: %v", status,
				input.Route.Method, input.Route.Path, err))
		}
	}

	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(encoded)
}

func (s *Server) addViolation(violation string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.violations = append(s.violations, violation)
}
