package ofb

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/regulator"
)

// Report roles, as in outbox.Interaction.
const (
	RoleClient = outbox.RoleClient
	RoleServer = outbox.RoleServer
)

// Time limits of the PCM: it discards reports whose timestamp is more than
// MaxReportAge in the past or more than MaxClockSkew in the future.
const (
	MaxClockSkew = 5 * time.Minute
	MaxReportAge = 7 * 24 * time.Hour
)

// TimestampLayout is the PCM timestamp format: UTC with milliseconds, such as
// 2021-11-11T18:08:08.894Z.
const TimestampLayout = "2006-01-02T15:04:05.000Z"

// Errors that NewReport and CheckReport wrap, for errors.Is.
var (
	// ErrInvalidReport marks a report that the PCM would reject whatever the
	// time. Resending it unchanged cannot succeed.
	ErrInvalidReport = fmt.Errorf("invalid PCM report: %w", regulator.ErrInvalidItem)

	// ErrReportTooOld marks a report whose timestamp is more than
	// MaxReportAge in the past. The PCM discards it.
	ErrReportTooOld = fmt.Errorf("PCM report timestamp is too old: %w", regulator.ErrItemExpired)

	// ErrReportInFuture marks a report whose timestamp is more than
	// MaxClockSkew in the future, which points at a wrong clock.
	ErrReportInFuture = fmt.Errorf("PCM report timestamp is in the future: %w", regulator.ErrItemExpired)
)

// Report is one item of a PCM private report request, a
// ClientReportRequest or a ServerReportRequest of the v3.1.0 spec. Its JSON
// encoding uses the spec's field names and TimestampLayout.
type Report struct {
	// AdditionalInfo holds the endpoint-specific extra fields. CLIENT
	// reports always send it, as {} when it is empty.
	AdditionalInfo map[string]any

	// ClientOrgID is the organisation id of the caller. Required.
	ClientOrgID string

	// ClientSSID is the caller's software statement id. Required for CLIENT.
	ClientSSID string

	// CorrelationID links the reports of one journey. Optional.
	CorrelationID string

	// Endpoint is the endpoint template from the allow-list. Required.
	Endpoint string

	// EndpointURIPrefix is the server address up to "/open-banking".
	// Required for CLIENT.
	EndpointURIPrefix string

	// FAPIInteractionID is the x-fapi-interaction-id of the call. Required,
	// except for CLIENT reports of calls without one (5xx or timed out).
	FAPIInteractionID string

	// HTTPMethod is GET, POST, PUT, DELETE or PATCH. Required.
	HTTPMethod string

	// ProcessTimespan is the duration of the call in milliseconds, above 0.
	ProcessTimespan int64

	// Role is RoleClient or RoleServer. Required.
	Role string

	// ServerOrgID is the organisation id of the server. Required.
	ServerOrgID string

	// StatusCode is the HTTP status of the response, 200 to 599.
	StatusCode int

	// Timestamp is when the call started. It is sent in UTC with
	// milliseconds and truncated to the millisecond.
	Timestamp time.Time
}

// reportJSON is the wire form of Report.
type reportJSON struct {
	FAPIInteractionID string `json:"fapiInteractionId,omitempty"`
	Endpoint          string `json:"endpoint"`
	StatusCode        int    `json:"statusCode"`
	HTTPMethod        string `json:"httpMethod"`
	CorrelationID     string `json:"correlationId,omitempty"`
	Timestamp         string `json:"timestamp"`
	ProcessTimespan   int64  `json:"processTimespan"`
	ClientSSID        string `json:"clientSSId,omitempty"`
	ClientOrgID       string `json:"clientOrgId"`
	ServerOrgID       string `json:"serverOrgId"`
	EndpointURIPrefix string `json:"endpointUriPrefix,omitempty"`
	Role              string `json:"role"`
	AdditionalInfo    any    `json:"additionalInfo,omitempty"`
}

// MarshalJSON encodes the report in the PCM wire format.
func (r Report) MarshalJSON() ([]byte, error) {
	wire := reportJSON{
		FAPIInteractionID: r.FAPIInteractionID,
		Endpoint:          r.Endpoint,
		StatusCode:        r.StatusCode,
		HTTPMethod:        r.HTTPMethod,
		CorrelationID:     r.CorrelationID,
		Timestamp:         r.Timestamp.UTC().Format(TimestampLayout),
		ProcessTimespan:   r.ProcessTimespan,
		ClientSSID:        r.ClientSSID,
		ClientOrgID:       r.ClientOrgID,
		ServerOrgID:       r.ServerOrgID,
		EndpointURIPrefix: r.EndpointURIPrefix,
		Role:              r.Role,
	}
	switch {
	case len(r.AdditionalInfo) > 0:
		wire.AdditionalInfo = r.AdditionalInfo
	case r.Role == RoleClient:
		wire.AdditionalInfo = map[string]any{}
	}
	return json.Marshal(wire)
}

// UnmarshalJSON decodes a report in the PCM wire format. The timestamp may be
// any RFC 3339 time.
func (r *Report) UnmarshalJSON(data []byte) error {
	var wire reportJSON
	if err := json.Unmarshal(data, &wire); err != nil {
		return err
	}
	timestamp, err := time.Parse(time.RFC3339Nano, wire.Timestamp)
	if err != nil {
		return fmt.Errorf("invalid PCM report timestamp %q: %w", wire.Timestamp, err)
	}

	*r = Report{
		ClientOrgID:       wire.ClientOrgID,
		ClientSSID:        wire.ClientSSID,
		CorrelationID:     wire.CorrelationID,
		Endpoint:          wire.Endpoint,
		EndpointURIPrefix: wire.EndpointURIPrefix,
		FAPIInteractionID: wire.FAPIInteractionID,
		HTTPMethod:        wire.HTTPMethod,
		ProcessTimespan:   wire.ProcessTimespan,
		Role:              wire.Role,
		ServerOrgID:       wire.ServerOrgID,
		StatusCode:        wire.StatusCode,
		Timestamp:         timestamp.UTC(),
	}
	if info, ok := wire.AdditionalInfo.(map[string]any); ok && len(info) > 0 {
		r.AdditionalInfo = info
	}
	return nil
}

// uuidPattern is the pattern that the spec gives every id field.
var uuidPattern = regexp.MustCompile(
	`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// NewReport maps a captured interaction to a PCM report. It returns an error
// wrapping ErrInvalidReport when the result would fail the spec's
// ClientReportRequest or ServerReportRequest schema, when the endpoint is not
// on the private reports allow-list, or when processTimespan is not above 0.
// NewReport does not check the timestamp against the clock: use CheckReport
// just before sending.
func NewReport(in outbox.Interaction) (Report, error) {
	report := Report{
		AdditionalInfo:    in.AdditionalInfo,
		ClientOrgID:       in.ClientOrgID,
		CorrelationID:     in.CorrelationID,
		Endpoint:          in.Endpoint,
		FAPIInteractionID: in.FAPIInteractionID,
		HTTPMethod:        in.HTTPMethod,
		ProcessTimespan:   in.ProcessTimespan,
		Role:              in.Role,
		ServerOrgID:       in.ServerOrgID,
		StatusCode:        in.StatusCode,
		Timestamp:         in.Timestamp.UTC().Truncate(time.Millisecond),
	}
	if in.Role == RoleClient {
		report.ClientSSID = in.ClientSSID
		report.EndpointURIPrefix = in.EndpointURIPrefix
	}

	if err := checkFields(report); err != nil {
		return Report{}, fmt.Errorf("%w: interaction %q: %w", ErrInvalidReport, in.FAPIInteractionID, err)
	}
	if err := validateReportSchema(report); err != nil {
		return Report{}, fmt.Errorf("%w: interaction %q: %w", ErrInvalidReport, in.FAPIInteractionID, err)
	}
	return report, nil
}

// checkFields applies the rules that give a readable error for the common
// mistakes, before the full schema check.
func checkFields(r Report) error {
	switch r.Role {
	case RoleClient:
		if r.ClientSSID == "" {
			return errors.New("missing clientSSId, required for CLIENT reports")
		}
		if r.EndpointURIPrefix == "" {
			return errors.New("missing endpointUriPrefix, required for CLIENT reports")
		}
		// The spec lets a CLIENT report omit the id only when the call has
		// none, "for example 5xx responses or timeouts".
		if r.FAPIInteractionID == "" && r.StatusCode < 500 && r.StatusCode != 408 {
			return fmt.Errorf("missing fapiInteractionId, required for status %d", r.StatusCode)
		}
	case RoleServer:
		if r.FAPIInteractionID == "" {
			return errors.New("missing fapiInteractionId, required for SERVER reports")
		}
	default:
		return fmt.Errorf("invalid role %q, want CLIENT or SERVER", r.Role)
	}

	for name, value := range map[string]string{
		"clientOrgId":       r.ClientOrgID,
		"serverOrgId":       r.ServerOrgID,
		"fapiInteractionId": r.FAPIInteractionID,
		"clientSSId":        r.ClientSSID,
	} {
		if value != "" && !uuidPattern.MatchString(value) {
			return fmt.Errorf("invalid %s %q, want a UUID", name, value)
		}
	}
	if r.ClientOrgID == "" || r.ServerOrgID == "" {
		return errors.New("missing clientOrgId or serverOrgId")
	}

	if !PrivateReportsAllowlist().Contains(r.Endpoint) {
		return fmt.Errorf("endpoint %q is not on the PCM private reports allow-list", r.Endpoint)
	}
	if r.ProcessTimespan <= 0 {
		return fmt.Errorf("invalid processTimespan %d, want above 0 ms", r.ProcessTimespan)
	}
	if r.StatusCode < 200 || r.StatusCode > 599 {
		return fmt.Errorf("invalid statusCode %d, want 200 to 599", r.StatusCode)
	}
	if r.Timestamp.IsZero() {
		return errors.New("missing timestamp")
	}

	// The spec gives personType no enum, but its description allows only
	// "PF" (person) and "PJ" (business).
	if personType, ok := r.AdditionalInfo["personType"]; ok && personType != "PF" && personType != "PJ" {
		return fmt.Errorf("invalid additionalInfo.personType %v, want PF or PJ", personType)
	}
	return nil
}

// validateReportSchema validates the report's JSON form against the schema
// of its role in the embedded spec, which checks the patterns, enums and the
// additionalInfo property types.
func validateReportSchema(r Report) error {
	spec, err := EmbeddedSpec()
	if err != nil {
		return err
	}
	schema, err := spec.ReportSchema(r.Role)
	if err != nil {
		return err
	}

	encoded, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode report: %w", err)
	}
	var value any
	if err := json.Unmarshal(encoded, &value); err != nil {
		return fmt.Errorf("decode report: %w", err)
	}
	if err := schema.VisitJSON(value, openapi3.MultiErrors()); err != nil {
		return fmt.Errorf("report does not match the PCM schema: %w", err)
	}
	return nil
}

// CheckReport applies the PCM time rules at now: it returns an error wrapping
// ErrReportTooOld when the timestamp is more than MaxReportAge before now,
// and ErrReportInFuture when it is more than MaxClockSkew after now.
func CheckReport(r Report, now time.Time) error {
	age := now.Sub(r.Timestamp)
	if age > MaxReportAge {
		return fmt.Errorf("%w: report %q is %s old, limit %s",
			ErrReportTooOld, r.FAPIInteractionID, age.Round(time.Second), MaxReportAge)
	}
	if -age > MaxClockSkew {
		return fmt.Errorf("%w: report %q is %s ahead, limit %s",
			ErrReportInFuture, r.FAPIInteractionID, (-age).Round(time.Second), MaxClockSkew)
	}
	return nil
}
