package capture

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/google/uuid"

	"github.com/finnest/eventruntime/outbox"
)

// HeaderFAPIInteractionID is the header that carries a call's interaction id.
const HeaderFAPIInteractionID = "X-Fapi-Interaction-Id"

// ErrCaptureRejected is returned by the ResponseWriter's Write after the
// middleware replaced the response with 503, so the handler can stop.
var ErrCaptureRejected = errors.New("capture: response replaced with 503 because the capture is not durable")

// Middleware returns next wrapped so that every served call to a listed
// endpoint is captured as a SERVER interaction before its response leaves.
// Wrap the whole mux once, and every route that matches a template of the
// allow-list is captured, including routes added later.
//
// For a captured call the middleware sets the x-fapi-interaction-id response
// header. When the client sent none, it also sets the request header, so the
// handler reads the same id. It holds the status, headers and up to
// MaxBufferedBytes of body, and persists the event when the handler returns,
// calls Flush, or writes past that size. Once the event is durable the held response is sent.
// When it is not, a fail_closed tenant's client gets 503 instead, and a
// fail_open tenant's client gets the handler's response.
//
// It panics when Config.ResolveServer is nil.
func (r *Recorder) Middleware(next http.Handler) http.Handler {
	if r.resolveServer == nil {
		panic("capture: Middleware needs Config.ResolveServer")
	}
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		template, ok := r.allowlist.Template(req.URL.Path)
		if !ok {
			next.ServeHTTP(w, req)
			r.countUnmatched(req.Context(), outbox.RoleServer, req.Method, req.Pattern)
			return
		}
		parties, ok := r.resolveServer(req)
		if !ok {
			r.countUnattributed(req.Context(), outbox.RoleServer, template)
			next.ServeHTTP(w, req)
			return
		}

		fapiID := req.Header.Get(HeaderFAPIInteractionID)
		if fapiID == "" {
			fapiID = uuid.NewString()
			req.Header.Set(HeaderFAPIInteractionID, fapiID)
		}
		w.Header().Set(HeaderFAPIInteractionID, fapiID)

		response := &heldResponse{
			recorder: r,
			request:  req,
			started:  time.Now(),
			target:   w,
			header:   w.Header().Clone(),
			interaction: outbox.Interaction{
				ClientOrgID:       parties.ClientOrgID,
				Endpoint:          template,
				FAPIInteractionID: fapiID,
				HTTPMethod:        req.Method,
				Role:              outbox.RoleServer,
				ServerOrgID:       parties.ServerOrgID,
				URL:               req.URL.Path,
			},
			tenantID: parties.TenantID,
			// Reading the setting now keeps the cache warm, so a failure
			// while the database is down still finds the tenant's value.
			failClosed: r.failClosed(req.Context(), parties.TenantID),
		}
		defer func() {
			if p := recover(); p != nil {
				response.abandon()
				panic(p)
			}
		}()
		next.ServeHTTP(response, req)
		response.release()
	})
}

// heldResponse is the http.ResponseWriter given to a captured handler. It
// keeps the status, headers and body until the capture is settled.
type heldResponse struct {
	recorder    *Recorder
	request     *http.Request
	started     time.Time
	target      http.ResponseWriter
	header      http.Header
	interaction outbox.Interaction
	tenantID    string

	failClosed bool
	status     int
	body       bytes.Buffer
	settled    bool
	rejected   bool
}

// Header returns the held header map. Changes after the response is sent have
// no effect, as with net/http.
func (h *heldResponse) Header() http.Header { return h.header }

// WriteHeader holds the status. Informational (1xx) statuses go out at once,
// as they carry no outcome.
func (h *heldResponse) WriteHeader(status int) {
	if h.settled || h.status != 0 {
		return
	}
	if status >= 100 && status < 200 && status != http.StatusSwitchingProtocols {
		copyHeader(h.target.Header(), h.header)
		h.target.WriteHeader(status)
		return
	}
	h.status = status
}

// Write holds p until the capture is settled, or settles it first when the
// held body would exceed MaxBufferedBytes.
func (h *heldResponse) Write(p []byte) (int, error) {
	if h.status == 0 {
		h.WriteHeader(http.StatusOK)
	}
	if !h.settled && h.body.Len()+len(p) <= h.recorder.maxBufferedBytes {
		return h.body.Write(p)
	}
	if !h.settled {
		h.settle()
	}
	if h.rejected {
		return 0, ErrCaptureRejected
	}
	return h.target.Write(p)
}

// FlushError settles the capture and flushes what is held to the client.
func (h *heldResponse) FlushError() error {
	if h.status == 0 {
		h.WriteHeader(http.StatusOK)
	}
	if !h.settled {
		h.settle()
	}
	if h.rejected {
		return ErrCaptureRejected
	}
	return http.NewResponseController(h.target).Flush()
}

// Flush is FlushError for callers of http.Flusher.
func (h *heldResponse) Flush() { _ = h.FlushError() }

// Unwrap gives http.ResponseController the client's writer for deadlines.
// NOTE: a handler that hijacks the connection through it bypasses the
// capture's hold, so its response is sent whether or not the capture is
// durable.
func (h *heldResponse) Unwrap() http.ResponseWriter { return h.target }

// release settles the capture after the handler returned.
func (h *heldResponse) release() {
	if h.status == 0 {
		h.status = http.StatusOK
	}
	if !h.settled {
		h.settle()
	}
}

// abandon records a handler that panicked before its response was settled as
// a 500, which is what net/http's recovery makes of it for the client.
func (h *heldResponse) abandon() {
	if h.settled {
		return
	}
	h.settled = true
	h.interaction.StatusCode = http.StatusInternalServerError
	h.fillTiming()
	_ = h.recorder.persist(h.request.Context(), h.tenantID, &h.interaction, h.request.Header)
}

// settle persists the capture, then sends the held response, or 503 when the
// capture failed and the tenant is fail_closed.
func (h *heldResponse) settle() {
	h.settled = true
	h.interaction.StatusCode = h.status
	h.fillTiming()
	ctx := h.request.Context()
	err := h.recorder.persist(ctx, h.tenantID, &h.interaction, h.request.Header)
	if err != nil && h.failClosed {
		h.rejected = true
		h.recorder.countRejected(ctx, h.tenantID, h.interaction.Endpoint)
		writeUnavailable(h.target, h.interaction.FAPIInteractionID)
		return
	}

	copyHeader(h.target.Header(), h.header)
	h.target.WriteHeader(h.status)
	if h.body.Len() > 0 {
		_, _ = h.target.Write(h.body.Bytes())
	}
	h.body = bytes.Buffer{}
}

func (h *heldResponse) fillTiming() {
	h.interaction.Timestamp = h.started.UTC().Truncate(time.Millisecond)
	h.interaction.ProcessTimespan = processTimespan(time.Since(h.started))
}

// copyHeader makes dst equal to src.
func copyHeader(dst, src http.Header) {
	for name := range dst {
		if _, ok := src[name]; !ok {
			delete(dst, name)
		}
	}
	for name, values := range src {
		dst[name] = values
	}
}

// unavailableBody is the 503 body in the Open Finance Brasil error format.
type unavailableBody struct {
	Errors []unavailableError `json:"errors"`
	Meta   struct {
		RequestDateTime string `json:"requestDateTime"`
	} `json:"meta"`
}

type unavailableError struct {
	Code   string `json:"code"`
	Title  string `json:"title"`
	Detail string `json:"detail"`
}

// writeUnavailable sends the 503 that replaces a response whose capture is not
// durable. Only the interaction id header survives from the handler's
// headers.
func writeUnavailable(w http.ResponseWriter, fapiID string) {
	var body unavailableBody
	body.Errors = []unavailableError{{
		Code:   "CAPTURE_UNAVAILABLE",
		Title:  "Service unavailable",
		Detail: "The call could not be recorded for the regulator. Retry later.",
	}}
	body.Meta.RequestDateTime = time.Now().UTC().Format(time.RFC3339)
	encoded, _ := json.Marshal(body)

	header := w.Header()
	for name := range header {
		delete(header, name)
	}
	header.Set(HeaderFAPIInteractionID, fapiID)
	header.Set("Content-Type", "application/json")
	header.Set("Content-Length", strconv.Itoa(len(encoded)))
	header.Set("Retry-After", "1")
	w.WriteHeader(http.StatusServiceUnavailable)
	_, _ = w.Write(encoded)
}

func (r *Recorder) countUnmatched(ctx context.Context, role, method, pattern string) {
	r.unmatched.Add(1)
	r.instruments.unmatched.Add(ctx, 1, metricRole(role, r.ecosystem))
	if ok, suppressed := r.unmatchedLog.allow(time.Now()); ok {
		// The real path may hold ids, so only the mux pattern is logged.
		r.logger.Info("call matches no listed endpoint; not reported", "event", "capture.route_unmatched",
			"role", role, "method", method, "pattern", pattern, "suppressed_since_last", suppressed)
	}
}

func (r *Recorder) countUnattributed(ctx context.Context, role, template string) {
	r.unattributed.Add(1)
	r.instruments.unattributed.Add(ctx, 1, metricRole(role, r.ecosystem))
	r.logger.Warn("call to a listed endpoint belongs to no tenant; not reported",
		"event", "capture.unattributed", "role", role, "endpoint", template)
}

func (r *Recorder) countRejected(ctx context.Context, tenantID, template string) {
	r.rejected.Add(1)
	r.instruments.rejected.Add(ctx, 1, metricRole(outbox.RoleServer, r.ecosystem))
	r.logger.Warn("response replaced with 503: capture not durable and tenant is fail_closed",
		"event", "capture.rejected", "tenant_id", tenantID, "endpoint", template)
}
