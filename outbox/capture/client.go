package capture

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/finnest/eventruntime/outbox"
)

// ClientCall describes an outgoing call to another participant, for its
// CLIENT report. Attach it to the request's context with WithClientCall.
type ClientCall struct {
	// AdditionalInfo holds the endpoint's extra report fields, such as
	// personType and consentId.
	AdditionalInfo map[string]any

	// ClientOrgID is the tenant's own organisation id.
	ClientOrgID string

	// ClientSSID is the software statement id of the tenant's client.
	ClientSSID string

	// CorrelationID is an optional id that ties related calls together.
	CorrelationID string

	// ServerOrgID is the called participant's organisation id.
	ServerOrgID string

	// TenantID is the tenant that makes the call.
	TenantID string
}

type clientCallKey struct{}

// WithClientCall returns ctx carrying call, for Transport to report.
func WithClientCall(ctx context.Context, call ClientCall) context.Context {
	return context.WithValue(ctx, clientCallKey{}, call)
}

// Transport returns an http.RoundTripper that sends each request through base
// and captures calls to listed endpoints as CLIENT interactions. Nil base
// means http.DefaultTransport.
//
// A request is captured when its path matches a template of the allow-list
// and its context carries a ClientCall. The x-fapi-interaction-id header is
// added when the request has none. A call that times out is reported with
// status 408 and the time waited. A call that fails without a response for
// another reason is not reported, because the other participant may never
// have seen it, and is counted in Stats.ClientNoResponse.
//
// RoundTrip returns once the capture is settled, so a response means its
// report is durable or counted as a persist failure. The response is
// returned either way, whatever the tenant's capture durability: the other
// participant has already acted on the call, and hiding its response would
// invite a retry of a call that may not be idempotent.
func (r *Recorder) Transport(base http.RoundTripper) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return &transport{base: base, recorder: r}
}

type transport struct {
	base     http.RoundTripper
	recorder *Recorder
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	r := t.recorder
	template, ok := r.allowlist.Template(req.URL.Path)
	if !ok {
		r.countUnmatched(req.Context(), outbox.RoleClient, req.Method, "")
		return t.base.RoundTrip(req)
	}
	call, ok := req.Context().Value(clientCallKey{}).(ClientCall)
	if !ok || call.TenantID == "" {
		r.countUnattributed(req.Context(), outbox.RoleClient, template)
		return t.base.RoundTrip(req)
	}

	fapiID := req.Header.Get(HeaderFAPIInteractionID)
	if fapiID == "" {
		// A RoundTripper must not change the caller's request.
		fapiID = uuid.NewString()
		req = req.Clone(req.Context())
		req.Header.Set(HeaderFAPIInteractionID, fapiID)
	}
	additionalInfo := call.AdditionalInfo
	if additionalInfo == nil {
		additionalInfo = map[string]any{}
	}
	interaction := outbox.Interaction{
		AdditionalInfo:    additionalInfo,
		ClientOrgID:       call.ClientOrgID,
		ClientSSID:        call.ClientSSID,
		CorrelationID:     call.CorrelationID,
		Endpoint:          template,
		EndpointURIPrefix: endpointURIPrefix(req),
		FAPIInteractionID: fapiID,
		HTTPMethod:        req.Method,
		Role:              outbox.RoleClient,
		ServerOrgID:       call.ServerOrgID,
		URL:               req.URL.Path,
	}

	started := time.Now()
	resp, err := t.base.RoundTrip(req)
	elapsed := time.Since(started)
	switch {
	case err == nil:
		interaction.StatusCode = resp.StatusCode
	case isTimeout(req.Context(), err):
		interaction.StatusCode = http.StatusRequestTimeout
	default:
		r.clientNoResponse.Add(1)
		r.logger.Warn("outgoing call failed without a response; not reported", "event", "capture.client_no_response",
			"tenant_id", call.TenantID, "endpoint", template, "error", err)
		return resp, err
	}
	interaction.Timestamp = started.UTC().Truncate(time.Millisecond)
	interaction.ProcessTimespan = processTimespan(elapsed)

	// The persist failure is counted and logged inside persist; the caller
	// still gets the response, as the doc comment explains.
	_ = r.persist(req.Context(), call.TenantID, &interaction, req.Header)
	return resp, err
}

// endpointURIPrefix returns the base URI of the called server: scheme, host
// and any path before "open-banking/", such as "https://api.bank.example/".
func endpointURIPrefix(req *http.Request) string {
	prefix := req.URL.Scheme + "://" + req.URL.Host
	path := req.URL.Path
	if i := strings.Index(path, "/open-banking/"); i >= 0 {
		return prefix + path[:i+1]
	}
	return prefix + "/"
}

// isTimeout reports whether err means the call ran out of time. An
// http.Client with a Timeout cancels a custom RoundTripper's request through
// Request.Cancel, which surfaces as "request canceled", so reaching the
// context's deadline counts as a timeout too.
func isTimeout(ctx context.Context, err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	if deadline, ok := ctx.Deadline(); ok && !time.Now().Before(deadline) {
		return true
	}
	var netErr net.Error
	return errors.As(err, &netErr) && netErr.Timeout()
}
