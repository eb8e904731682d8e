package ofb_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/regulator/ofb"
)

var interactionTime = time.Date(2026, 3, 9, 14, 5, 6, 789_654_321, time.FixedZone("BRT", -3*3600))

func clientInteraction() outbox.Interaction {
	return outbox.Interaction{
		AdditionalInfo:    map[string]any{"personType": "PJ", "consentId": "urn:bank:c-1"},
		ClientOrgID:       orgA,
		ClientSSID:        ssA,
		CorrelationID:     "journey-7",
		Endpoint:          "/open-banking/consents/v3/consents/{consentId}",
		EndpointURIPrefix: "https://api.bank-b.example/opbk",
		FAPIInteractionID: "d78fc4e5-37ca-4da3-adf2-9b082bf92280",
		HTTPMethod:        "GET",
		ProcessTimespan:   120,
		Role:              outbox.RoleClient,
		ServerASID:        "ignored-by-ofb",
		ServerOrgID:       orgB,
		StatusCode:        200,
		Timestamp:         interactionTime,
		URL:               "/open-banking/consents/v3/consents/urn:bank:c-1",
	}
}

func serverInteraction() outbox.Interaction {
	in := clientInteraction()
	in.Role = outbox.RoleServer
	in.AdditionalInfo = nil
	in.CorrelationID = ""
	return in
}

func encodeReport(t *testing.T, report ofb.Report) map[string]any {
	t.Helper()
	encoded, err := json.Marshal(report)
	require.NoError(t, err)
	var decoded map[string]any
	require.NoError(t, json.Unmarshal(encoded, &decoded))
	return decoded
}

func TestNewReport(t *testing.T) {
	t.Parallel()

	t.Run("ClientReportWireFormat", func(t *testing.T) {
		t.Parallel()
		report, err := ofb.NewReport(clientInteraction())
		require.NoError(t, err)

		wire := encodeReport(t, report)
		require.Equal(t, "2026-03-09T17:05:06.789Z", wire["timestamp"])
		require.Equal(t, ssA, wire["clientSSId"])
		require.Equal(t, "https://api.bank-b.example/opbk", wire["endpointUriPrefix"])
		require.Equal(t, "journey-7", wire["correlationId"])
		require.Equal(t, map[string]any{"personType": "PJ", "consentId": "urn:bank:c-1"}, wire["additionalInfo"])
		require.Equal(t, float64(120), wire["processTimespan"])
		require.NotContains(t, wire, "serverASId")
		require.NotContains(t, wire, "url")
	})

	t.Run("ClientReportSendsEmptyAdditionalInfo", func(t *testing.T) {
		t.Parallel()
		in := clientInteraction()
		in.AdditionalInfo = nil
		report, err := ofb.NewReport(in)
		require.NoError(t, err)
		require.Equal(t, map[string]any{}, encodeReport(t, report)["additionalInfo"])
	})

	t.Run("ServerReportOmitsClientFields", func(t *testing.T) {
		t.Parallel()
		report, err := ofb.NewReport(serverInteraction())
		require.NoError(t, err)

		wire := encodeReport(t, report)
		require.NotContains(t, wire, "clientSSId")
		require.NotContains(t, wire, "endpointUriPrefix")
		require.NotContains(t, wire, "additionalInfo")
		require.NotContains(t, wire, "correlationId")
		require.Equal(t, "SERVER", wire["role"])
	})

	t.Run("ClientReportWithoutIDForServerError", func(t *testing.T) {
		t.Parallel()
		in := clientInteraction()
		in.FAPIInteractionID = ""
		in.StatusCode = 504
		report, err := ofb.NewReport(in)
		require.NoError(t, err)
		require.NotContains(t, encodeReport(t, report), "fapiInteractionId")
	})

	t.Run("RoundTripsThroughJSON", func(t *testing.T) {
		t.Parallel()
		report, err := ofb.NewReport(clientInteraction())
		require.NoError(t, err)
		encoded, err := json.Marshal(report)
		require.NoError(t, err)
		var decoded ofb.Report
		require.NoError(t, json.Unmarshal(encoded, &decoded))
		require.Equal(t, report, decoded)
	})
}

func TestNewReportErrors(t *testing.T) {
	t.Parallel()

	cases := []struct {
		name   string
		modify func(in *outbox.Interaction)
		want   string
	}{
		{"UnknownRole", func(in *outbox.Interaction) { in.Role = "PROXY" }, "invalid role"},
		{"ClientWithoutSoftwareStatement", func(in *outbox.Interaction) { in.ClientSSID = "" }, "clientSSId"},
		{"ClientWithoutURIPrefix", func(in *outbox.Interaction) { in.EndpointURIPrefix = "" }, "endpointUriPrefix"},
		{"ClientWithoutIDForSuccess", func(in *outbox.Interaction) { in.FAPIInteractionID = "" }, "fapiInteractionId"},
		{"ServerWithoutID", func(in *outbox.Interaction) {
			in.Role = outbox.RoleServer
			in.FAPIInteractionID = ""
			in.StatusCode = 500
		}, "fapiInteractionId"},
		{"NonUUIDOrganisation", func(in *outbox.Interaction) { in.ServerOrgID = "bank-b" }, "serverOrgId"},
		{"MissingClientOrganisation", func(in *outbox.Interaction) { in.ClientOrgID = "" }, "clientOrgId"},
		{"RealPathAsEndpoint", func(in *outbox.Interaction) { in.Endpoint = in.URL }, "allow-list"},
		{"OpenDataEndpoint", func(in *outbox.Interaction) { in.Endpoint = "/open-banking/channels/v2/branches" },
			"allow-list"},
		{"ZeroTimespan", func(in *outbox.Interaction) { in.ProcessTimespan = 0 }, "processTimespan"},
		{"NegativeTimespan", func(in *outbox.Interaction) { in.ProcessTimespan = -5 }, "processTimespan"},
		{"StatusBelow200", func(in *outbox.Interaction) { in.StatusCode = 101 }, "statusCode"},
		{"MissingTimestamp", func(in *outbox.Interaction) { in.Timestamp = time.Time{} }, "timestamp"},
		{"UnknownHTTPMethod", func(in *outbox.Interaction) { in.HTTPMethod = "HEAD" }, "httpMethod"},
		{"InvalidPersonType", func(in *outbox.Interaction) { in.AdditionalInfo["personType"] = "PX" }, "personType"},
		{"InvalidPaymentType", func(in *outbox.Interaction) { in.AdditionalInfo["paymentType"] = "LATER" },
			"paymentType"},
		{"CorrelationIDWithBrackets", func(in *outbox.Interaction) { in.CorrelationID = "id<1>" }, "correlationId"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			in := clientInteraction()
			tc.modify(&in)
			_, err := ofb.NewReport(in)
			require.ErrorIs(t, err, ofb.ErrInvalidReport)
			require.ErrorContains(t, err, tc.want)
		})
	}
}

func TestCheckReport(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 9, 12, 0, 0, 0, time.UTC)
	at := func(offset time.Duration) ofb.Report { return ofb.Report{Timestamp: now.Add(offset)} }

	require.NoError(t, ofb.CheckReport(at(0), now))
	require.NoError(t, ofb.CheckReport(at(-7*24*time.Hour), now))
	require.NoError(t, ofb.CheckReport(at(5*time.Minute), now))
	require.ErrorIs(t, ofb.CheckReport(at(-7*24*time.Hour-time.Millisecond), now), ofb.ErrReportTooOld)
	require.ErrorIs(t, ofb.CheckReport(at(5*time.Minute+time.Millisecond), now), ofb.ErrReportInFuture)
}
