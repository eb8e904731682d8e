package opinfake_test

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/regulator/opin"
	"github.com/finnest/eventruntime/regulator/opinfake"
)

const (
	organisationID      = "c1ddd896-1145-4177-9b58-8a6e310557e2"
	otherOrganisationID = "7d2e9c41-3b8f-4a06-b5d7-e1f0a2c39b84"
	keyID               = "kid-tenant"
	otherKeyID          = "kid-other"
)

// testKeys holds two RSA keys, generated once because 2048-bit generation
// is slow.
var testKeys = sync.OnceValue(func() [2]*rsa.PrivateKey {
	var keys [2]*rsa.PrivateKey
	for i := range keys {
		key, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		keys[i] = key
	}
	return keys
})

type bundle struct {
	fake   *opinfake.Server
	client *http.Client
}

func setup(t *testing.T) *bundle {
	t.Helper()
	fake, err := opinfake.New(opinfake.Config{})
	require.NoError(t, err)
	require.NoError(t, fake.Start())
	t.Cleanup(func() { _ = fake.Close() })
	keys := testKeys()
	fake.RegisterKey(organisationID, keyID, &keys[0].PublicKey)
	fake.RegisterKey(otherOrganisationID, otherKeyID, &keys[1].PublicKey)
	transport := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: fake.RootCAs()}}
	return &bundle{fake: fake, client: &http.Client{Transport: transport, Timeout: 30 * time.Second}}
}

// serverEvent returns a valid SERVER event of organisationID.
func serverEvent() opin.Event {
	return opin.Event{
		AdditionalInfo:    &opin.AdditionalInfo{ConsentID: "urn:seguradora:C1DD33123"},
		ClientOrgID:       otherOrganisationID,
		ClientSSID:        "2a59c2a3-529f-41c6-97e3-77395e9951ca",
		CorrelationID:     uuid.NewString(),
		Endpoint:          "/open-insurance/insurance-auto/v1/insurance-auto/{policyId}/claim",
		FAPIInteractionID: uuid.NewString(),
		HTTPMethod:        "GET",
		ProcessTimespan:   120,
		ServerASID:        "f8cd7b48-197d-419b-8680-f42226111b6f",
		ServerOrgID:       organisationID,
		StatusCode:        200,
		Timestamp:         time.Now().UTC().Format(opin.TimestampLayout),
		URL:               "/open-insurance/insurance-auto/v1/insurance-auto/p-123/claim",
	}
}

func batchPayload(t *testing.T, organisation string, events ...opin.Event) []byte {
	t.Helper()
	payload, err := json.Marshal(map[string]any{"organisationId": organisation, "events": events})
	require.NoError(t, err)
	return payload
}

// signWithGoJose signs payload as the adapter does.
func signWithGoJose(t *testing.T, key *rsa.PrivateKey, kid string, payload []byte) string {
	t.Helper()
	signer, err := opin.NewSigner(key, kid)
	require.NoError(t, err)
	compact, err := signer.Sign(payload)
	require.NoError(t, err)
	return compact
}

// signByHand builds a compact JWS with crypto/rsa, for headers and salt
// lengths that a JOSE library would not produce. alg RS256 selects PKCS #1
// v1.5, any other alg PSS with saltLength.
func signByHand(t *testing.T, key *rsa.PrivateKey, header map[string]string, payload []byte, saltLength int) string {
	t.Helper()
	encodedHeader, err := json.Marshal(header)
	require.NoError(t, err)
	signingInput := base64.RawURLEncoding.EncodeToString(encodedHeader) + "." +
		base64.RawURLEncoding.EncodeToString(payload)
	digest := sha256.Sum256([]byte(signingInput))

	var signature []byte
	if header["alg"] == "RS256" {
		signature, err = rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, digest[:])
	} else {
		signature, err = rsa.SignPSS(rand.Reader, key, crypto.SHA256, digest[:], &rsa.PSSOptions{SaltLength: saltLength})
	}
	require.NoError(t, err)
	return signingInput + "." + base64.RawURLEncoding.EncodeToString(signature)
}

type response struct {
	status int
	body   string
}

func (b *bundle) post(t *testing.T, path, contentType, body string) response {
	t.Helper()
	request, err := http.NewRequest(http.MethodPost, b.fake.URL()+path, strings.NewReader(body))
	require.NoError(t, err)
	request.Header.Set("Content-Type", contentType)
	resp, err := b.client.Do(request)
	require.NoError(t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return response{status: resp.StatusCode, body: string(data)}
}

func TestBatchAccepted(t *testing.T) {
	t.Parallel()
	b := setup(t)
	event := serverEvent()
	compact := signWithGoJose(t, testKeys()[0], keyID, batchPayload(t, organisationID, event))

	resp := b.post(t, opin.ServerBatchPath, "application/jwt", compact)

	require.Equal(t, http.StatusOK, resp.status, resp.body)
	var results []map[string]string
	require.NoError(t, json.Unmarshal([]byte(resp.body), &results))
	require.Len(t, results, 1)
	require.Equal(t, "ACCEPTED", results[0]["status"])
	require.Equal(t, event.CorrelationID, results[0]["correlationId"])
	require.NotEmpty(t, results[0]["reportId"])
	accepted := b.fake.Accepted()
	require.Len(t, accepted, 1)
	require.Equal(t, opin.RoleServer, accepted[0].Role)
	require.Equal(t, organisationID, accepted[0].OrganisationID)
	require.Equal(t, keyID, accepted[0].KeyID)
	require.Equal(t, 1, b.fake.Seen(event.FAPIInteractionID))
	require.Empty(t, b.fake.Violations())
}

func TestBatchRejected(t *testing.T) {
	t.Parallel()
	keys := testKeys()
	valid := func(t *testing.T) []byte { return batchPayload(t, organisationID, serverEvent()) }
	psHeader := map[string]string{"alg": "PS256", "kid": keyID, "typ": "JWT"}

	tests := []struct {
		name        string
		contentType string
		body        func(t *testing.T) string
		status      int
		violation   string
	}{
		{"WrongKey", "application/jwt", func(t *testing.T) string {
			return signWithGoJose(t, keys[1], keyID, valid(t))
		}, http.StatusUnauthorized, "does not verify"},
		{"UnknownKid", "application/jwt", func(t *testing.T) string {
			return signWithGoJose(t, keys[0], "kid-unknown", valid(t))
		}, http.StatusUnauthorized, `kid "kid-unknown" is not registered`},
		{"KidOfOtherOrganisation", "application/jwt", func(t *testing.T) string {
			return signWithGoJose(t, keys[1], otherKeyID, valid(t))
		}, http.StatusUnauthorized, "registered to another organisation"},
		{"TamperedBody", "application/jwt", func(t *testing.T) string {
			parts := strings.Split(signWithGoJose(t, keys[0], keyID, valid(t)), ".")
			parts[1] = base64.RawURLEncoding.EncodeToString(valid(t))
			return strings.Join(parts, ".")
		}, http.StatusUnauthorized, "does not verify"},
		{"WrongAlg", "application/jwt", func(t *testing.T) string {
			return signByHand(t, keys[0], map[string]string{"alg": "RS256", "kid": keyID, "typ": "JWT"}, valid(t), 0)
		}, http.StatusUnauthorized, `alg is "RS256"`},
		{"WrongTyp", "application/jwt", func(t *testing.T) string {
			return signByHand(t, keys[0], map[string]string{"alg": "PS256", "kid": keyID, "typ": "JOSE"}, valid(t),
				rsa.PSSSaltLengthEqualsHash)
		}, http.StatusUnauthorized, `typ is "JOSE"`},
		{"MissingTyp", "application/jwt", func(t *testing.T) string {
			return signByHand(t, keys[0], map[string]string{"alg": "PS256", "kid": keyID}, valid(t),
				rsa.PSSSaltLengthEqualsHash)
		}, http.StatusUnauthorized, `typ is ""`},
		{"SaltLength64", "application/jwt", func(t *testing.T) string {
			return signByHand(t, keys[0], psHeader, valid(t), 64)
		}, http.StatusUnauthorized, "does not verify"},
		{"SaltLengthMaximum", "application/jwt", func(t *testing.T) string {
			return signByHand(t, keys[0], psHeader, valid(t), rsa.PSSSaltLengthAuto)
		}, http.StatusUnauthorized, "does not verify"},
		{"NotAJWS", "application/jwt", func(t *testing.T) string {
			return string(valid(t))
		}, http.StatusUnauthorized, "not a compact JWS"},
		{"WrongContentType", "application/json", func(t *testing.T) string {
			return signWithGoJose(t, keys[0], keyID, valid(t))
		}, http.StatusUnsupportedMediaType, "want application/jwt"},
		{"TooManyEvents", "application/jwt", func(t *testing.T) string {
			events := make([]opin.Event, opin.MaxBatchSize+1)
			for i := range events {
				events[i] = serverEvent()
			}
			return signWithGoJose(t, keys[0], keyID, batchPayload(t, organisationID, events...))
		}, http.StatusRequestEntityTooLarge, "5001 events, limit 5000"},
		{"SpecInvalidEvent", "application/jwt", func(t *testing.T) string {
			event := serverEvent()
			event.HTTPMethod = "HEAD"
			return signWithGoJose(t, keys[0], keyID, batchPayload(t, organisationID, event))
		}, http.StatusBadRequest, `Error at "/events/0/httpMethod"`},
		{"SpecInvalidTimestampLength", "application/jwt", func(t *testing.T) string {
			event := serverEvent()
			event.Timestamp = "2022-11-07T17:26:32.123Z"
			return signWithGoJose(t, keys[0], keyID, batchPayload(t, organisationID, event))
		}, http.StatusBadRequest, "maximum string length is 20"},
		{"MissingOrganisationID", "application/jwt", func(t *testing.T) string {
			payload := []byte(`{"events":[]}`)
			return signWithGoJose(t, keys[0], keyID, payload)
		}, http.StatusUnauthorized, "registered to another organisation"},
		{"EmptyEvents", "application/jwt", func(t *testing.T) string {
			return signWithGoJose(t, keys[0], keyID, batchPayload(t, organisationID))
		}, http.StatusBadRequest, "no events"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)

			resp := b.post(t, opin.ServerBatchPath, tt.contentType, tt.body(t))

			require.Equal(t, tt.status, resp.status, resp.body)
			violations := b.fake.Violations()
			require.Len(t, violations, 1)
			require.Contains(t, violations[0], tt.violation)
			require.Empty(t, b.fake.Accepted())
			require.Empty(t, b.fake.SeenCounts())
		})
	}
}

func TestSaltLengthEqualToHashAccepted(t *testing.T) {
	t.Parallel()
	b := setup(t)
	header := map[string]string{"alg": "PS256", "kid": keyID, "typ": "JWT"}
	// 32 bytes is what rsa.PSSSaltLengthEqualsHash gives for SHA-256.
	compact := signByHand(t, testKeys()[0], header, batchPayload(t, organisationID, serverEvent()), 32)

	resp := b.post(t, opin.ServerBatchPath, "application/jwt", compact)

	require.Equal(t, http.StatusOK, resp.status, resp.body)
}

func TestBatchDiscardsEvents(t *testing.T) {
	t.Parallel()
	b := setup(t)
	valid := serverEvent()
	noConsent := serverEvent()
	noConsent.AdditionalInfo = nil
	otherServer := serverEvent()
	otherServer.ServerOrgID = otherOrganisationID
	compact := signWithGoJose(t, testKeys()[0], keyID, batchPayload(t, organisationID, valid, noConsent, otherServer))

	resp := b.post(t, opin.ServerBatchPath, "application/jwt", compact)

	require.Equal(t, http.StatusMultiStatus, resp.status, resp.body)
	var results []map[string]string
	require.NoError(t, json.Unmarshal([]byte(resp.body), &results))
	require.Len(t, results, 3)
	require.Equal(t, "ACCEPTED", results[0]["status"])
	require.Equal(t, "DISCARDED", results[1]["status"])
	require.Contains(t, results[1]["message"], "consentId")
	require.Equal(t, "DISCARDED", results[2]["status"])
	require.Contains(t, results[2]["message"], "SERVER organisation")
	for _, result := range results {
		require.NotContains(t, result, "reportId", "the 207 schema has no reportId")
	}
	require.Len(t, b.fake.Accepted(), 1)
	require.Empty(t, b.fake.Violations(), "the 207 response must match the spec")
}

func TestClientBatchChecksClientOrganisation(t *testing.T) {
	t.Parallel()
	b := setup(t)
	event := serverEvent()
	event.ClientOrgID, event.ServerOrgID = organisationID, otherOrganisationID
	compact := signWithGoJose(t, testKeys()[0], keyID, batchPayload(t, organisationID, event))

	resp := b.post(t, opin.ClientBatchPath, "application/jwt", compact)

	require.Equal(t, http.StatusOK, resp.status, resp.body)
	require.Equal(t, opin.RoleClient, b.fake.Accepted()[0].Role)
}

func TestDuplicateEventAcceptedOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	event := serverEvent()
	payload := batchPayload(t, organisationID, event)

	first := b.post(t, opin.ServerBatchPath, "application/jwt", signWithGoJose(t, testKeys()[0], keyID, payload))
	second := b.post(t, opin.ServerBatchPath, "application/jwt", signWithGoJose(t, testKeys()[0], keyID, payload))

	require.Equal(t, http.StatusOK, first.status)
	require.Equal(t, first.body, second.body, "a duplicate gets the first reportId")
	require.Len(t, b.fake.Accepted(), 1)
	require.Equal(t, 2, b.fake.Seen(event.FAPIInteractionID))
}

func TestQueuedFault(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.fake.QueueFaults(opinfake.Fault{Status: http.StatusInternalServerError, Message: "boom"})
	compact := signWithGoJose(t, testKeys()[0], keyID, batchPayload(t, organisationID, serverEvent()))

	faulted := b.post(t, opin.ServerBatchPath, "application/jwt", compact)
	normal := b.post(t, opin.ServerBatchPath, "application/jwt", compact)

	require.Equal(t, http.StatusInternalServerError, faulted.status)
	require.JSONEq(t, `{"message":"boom"}`, faulted.body)
	require.Equal(t, http.StatusOK, normal.status)
	require.Equal(t, 2, b.fake.Requests())
}

func TestResponderSeesEvents(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var counts []int
	b.fake.SetResponder(func(r *http.Request, events []json.RawMessage) *opinfake.Fault {
		counts = append(counts, len(events))
		return &opinfake.Fault{Status: http.StatusServiceUnavailable}
	})
	compact := signWithGoJose(t, testKeys()[0], keyID, batchPayload(t, organisationID, serverEvent(), serverEvent()))

	resp := b.post(t, opin.ServerBatchPath, "application/jwt", compact)

	require.Equal(t, http.StatusServiceUnavailable, resp.status)
	require.Equal(t, []int{2}, counts)
	require.Empty(t, b.fake.Accepted())
	require.Empty(t, b.fake.SeenCounts(), "a forced response counts nothing as seen")
}
