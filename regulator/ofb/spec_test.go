package ofb_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/regulator"
	"github.com/finnest/eventruntime/regulator/ofb"
)

// validatePost validates a report request body against a loaded document.
func validatePost(t testing.TB, doc *openapi3.T, items []map[string]any) error {
	t.Helper()
	body, err := json.Marshal(items)
	require.NoError(t, err)
	pathItem := doc.Paths.Value(ofb.ReportPath)
	require.NotNil(t, pathItem)

	request, err := http.NewRequest(http.MethodPost, ofb.ReportPath, bytes.NewReader(body))
	require.NoError(t, err)
	request.Header.Set("Content-Type", "application/json")
	return openapi3filter.ValidateRequest(context.Background(), &openapi3filter.RequestValidationInput{
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc},
		Request: request,
		Route: &routers.Route{
			Spec: doc, Path: ofb.ReportPath, PathItem: pathItem,
			Method: http.MethodPost, Operation: pathItem.Post,
		},
	})
}

// clientItem and serverItem are the spec's own request examples. Their 2021
// timestamps are fine because the schema does not check time.
func clientItem() map[string]any {
	return map[string]any{
		"timestamp":         "2021-11-11T18:08:08.894Z",
		"fapiInteractionId": "d78fc4e5-37ca-4da3-adf2-9b082bf92280",
		"clientSSId":        "f0b5419b-2b5f-4f59-9862-6d2a8e23be26",
		"clientOrgId":       "082ff90b-9d65-46bb-b123-b88eb47fd61c",
		"serverOrgId":       "b8e34d5a-2ed5-451e-8ddb-45a1edc76243",
		"endpoint":          "/open-banking/products-services/v1/business-financings",
		"statusCode":        200,
		"httpMethod":        "GET",
		"correlationId":     "wNupARo7I9E2PLJZph18a0M9y7DcUe7ITt3DqUOJd9NVjnskxf",
		"processTimespan":   120,
		"endpointUriPrefix": "https://ofin.bank.com/",
		"role":              "CLIENT",
		"additionalInfo": map[string]any{
			"personType": "PF",
			"consentId":  "uri:bank:d1541b17-3175-477d-a52b-2813ae2c4c36",
		},
	}
}

func serverItem() map[string]any {
	return map[string]any{
		"timestamp":         "2021-11-11T19:41:41.811Z",
		"fapiInteractionId": "d1541b17-3175-477d-a52b-2813ae2c4c36",
		"clientOrgId":       "082ff90b-9d65-46bb-b123-b88eb47fd61c",
		"serverOrgId":       "b8e34d5a-2ed5-451e-8ddb-45a1edc76243",
		"endpoint":          "/open-banking/products-services/v1/business-financings",
		"statusCode":        200,
		"httpMethod":        "GET",
		"processTimespan":   125,
		"role":              "SERVER",
	}
}

func TestSpecAsPublished(t *testing.T) {
	t.Parallel()

	doc, err := openapi3.NewLoader().LoadFromData(regulator.OFBSpec())
	require.NoError(t, err)

	t.Run("WholeDocumentValidationWithExamplesFails", func(t *testing.T) {
		t.Parallel()
		require.Error(t, doc.Validate(context.Background()))
	})

	t.Run("ClientItemMatchesBothOneOfSchemas", func(t *testing.T) {
		t.Parallel()
		err := validatePost(t, doc, []map[string]any{clientItem()})
		require.ErrorIs(t, err, openapi3.ErrOneOfConflict)
	})

	t.Run("ServerItemMatchesOnlyServerSchema", func(t *testing.T) {
		t.Parallel()
		require.NoError(t, validatePost(t, doc, []map[string]any{serverItem()}))
	})
}

func TestLoadSpec(t *testing.T) {
	t.Parallel()

	spec, err := ofb.EmbeddedSpec()
	require.NoError(t, err)

	valid := func(t *testing.T, items ...map[string]any) error {
		t.Helper()
		return validatePost(t, spec.Doc, items)
	}

	t.Run("AcceptsSpecExamples", func(t *testing.T) {
		t.Parallel()
		require.NoError(t, valid(t, clientItem(), serverItem()))
	})

	t.Run("ClientItemWithoutFAPIInteractionIDIsValid", func(t *testing.T) {
		t.Parallel()
		item := clientItem()
		delete(item, "fapiInteractionId")
		require.NoError(t, valid(t, item))
	})

	t.Run("ServerItemWithClientFieldsIsValidatedAsServer", func(t *testing.T) {
		t.Parallel()
		item := serverItem()
		for key, value := range clientItem() {
			if _, ok := item[key]; !ok {
				item[key] = value
			}
		}
		require.NoError(t, valid(t, item))
	})

	t.Run("ServerRoleDoesNotFallBackToClientSchema", func(t *testing.T) {
		t.Parallel()
		item := clientItem()
		item["role"] = "SERVER"
		delete(item, "fapiInteractionId")
		require.Error(t, valid(t, item))
	})

	t.Run("ClientRoleDoesNotFallBackToServerSchema", func(t *testing.T) {
		t.Parallel()
		item := serverItem()
		item["role"] = "CLIENT"
		require.Error(t, valid(t, item))
	})

	t.Run("RejectsUnknownRole", func(t *testing.T) {
		t.Parallel()
		item := serverItem()
		item["role"] = "PROXY"
		require.Error(t, valid(t, item))
	})

	t.Run("RejectsMissingRole", func(t *testing.T) {
		t.Parallel()
		item := serverItem()
		delete(item, "role")
		require.Error(t, valid(t, item))
	})

	t.Run("RejectsClientItemWithoutAdditionalInfo", func(t *testing.T) {
		t.Parallel()
		item := clientItem()
		delete(item, "additionalInfo")
		require.Error(t, valid(t, item))
	})

	t.Run("RejectsMissingStatusCode", func(t *testing.T) {
		t.Parallel()
		item := serverItem()
		delete(item, "statusCode")
		require.Error(t, valid(t, item))
	})

	t.Run("RejectsUnknownHTTPMethod", func(t *testing.T) {
		t.Parallel()
		item := clientItem()
		item["httpMethod"] = "HEAD"
		require.Error(t, valid(t, item))
	})

	t.Run("RejectsNonRFC3339Timestamp", func(t *testing.T) {
		t.Parallel()
		item := serverItem()
		item["timestamp"] = "2021-11-11 19:41:41"
		require.Error(t, valid(t, item))
	})

	t.Run("RejectsInvalidPaymentTypeEnum", func(t *testing.T) {
		t.Parallel()
		item := clientItem()
		item["additionalInfo"] = map[string]any{"paymentType": "LATER"}
		require.Error(t, valid(t, item))
	})

	t.Run("AcceptsUnknownTopLevelField", func(t *testing.T) {
		t.Parallel()
		// Neither report schema sets additionalProperties: false.
		item := serverItem()
		item["extra"] = "x"
		require.NoError(t, valid(t, item))
	})
}

// BenchmarkValidateRequest5000 measures kin-openapi request validation of
// one 5,000-item report body, half CLIENT and half SERVER.
func BenchmarkValidateRequest5000(b *testing.B) {
	spec, err := ofb.EmbeddedSpec()
	require.NoError(b, err)
	items := make([]map[string]any, 5000)
	for i := range items {
		if i%2 == 0 {
			items[i] = clientItem()
		} else {
			items[i] = serverItem()
		}
	}

	for b.Loop() {
		require.NoError(b, validatePost(b, spec.Doc, items))
	}
}
