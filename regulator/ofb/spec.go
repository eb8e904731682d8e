package ofb

import (
	"context"
	"fmt"
	"sync"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/finnest/eventruntime/regulator"
)

// ReportPath is the path of the PCM private report API. Reports are posted to
// it and read back at ReportPath + fapiInteractionId.
const ReportPath = "/report-api/v1/private/report/"

const (
	clientReportSchemaRef = "#/components/schemas/ClientReportRequest"
	serverReportSchemaRef = "#/components/schemas/ServerReportRequest"
)

// Spec is the loaded PCM OpenAPI document.
type Spec struct {
	// Doc is the parsed document, with the role discriminator that
	// LoadSpec adds to the report request items.
	Doc *openapi3.T

	// ValidationErr is the result of validating the whole document without
	// its examples. It is informational: request validation works even when
	// it is not nil.
	ValidationErr error
}

var embeddedSpec = sync.OnceValues(func() (*Spec, error) {
	return LoadSpec(regulator.OFBSpec())
})

// EmbeddedSpec returns the embedded PCM v3.1.0 document, loaded once by
// LoadSpec. Callers must not modify it.
func EmbeddedSpec() (*Spec, error) { return embeddedSpec() }

// LoadSpec parses a PCM OpenAPI document and prepares it for request
// validation.
//
// The v3.1.0 document has a pattern that begins with the literal text
// "pattern: " (in ConsentsStockRequest), so its examples do not validate.
// LoadSpec validates the document without examples and keeps going when that
// fails, storing the error in ValidationErr.
//
// The request items of POST /report-api/v1/private/report/ are
// oneOf [ClientReportRequest, ServerReportRequest]. Neither schema forbids
// extra properties and both accept role CLIENT and SERVER, so a CLIENT item
// with a fapiInteractionId matches both and fails oneOf, although it is the
// documented example. LoadSpec adds a discriminator on role (CLIENT to
// ClientReportRequest, SERVER to ServerReportRequest), so each item is
// validated against the schema of its role only.
func LoadSpec(data []byte) (*Spec, error) {
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(data)
	if err != nil {
		return nil, fmt.Errorf("load PCM OpenAPI document: %w", err)
	}

	spec := &Spec{Doc: doc}
	spec.ValidationErr = doc.Validate(context.Background(), openapi3.DisableExamplesValidation())

	items, err := reportItemsSchema(doc)
	if err != nil {
		return nil, err
	}
	items.Discriminator = &openapi3.Discriminator{
		PropertyName: "role",
		Mapping: map[string]openapi3.MappingRef{
			RoleClient: {Ref: clientReportSchemaRef},
			RoleServer: {Ref: serverReportSchemaRef},
		},
	}
	return spec, nil
}

// reportItemsSchema returns the item schema of the report POST request body
// after checking that it is the expected oneOf.
func reportItemsSchema(doc *openapi3.T) (*openapi3.Schema, error) {
	operation := doc.Paths.Find(ReportPath)
	if operation == nil || operation.Post == nil || operation.Post.RequestBody == nil {
		return nil, fmt.Errorf("PCM OpenAPI document has no POST %s request body", ReportPath)
	}
	media := operation.Post.RequestBody.Value.Content.Get("application/json")
	if media == nil || media.Schema == nil || media.Schema.Value.Items == nil {
		return nil, fmt.Errorf("PCM OpenAPI document: POST %s body is not a JSON array", ReportPath)
	}

	items := media.Schema.Value.Items.Value
	if len(items.OneOf) != 2 || items.OneOf[0].Ref != clientReportSchemaRef ||
		items.OneOf[1].Ref != serverReportSchemaRef {
		return nil, fmt.Errorf("PCM OpenAPI document: POST %s items are not oneOf %s, %s",
			ReportPath, clientReportSchemaRef, serverReportSchemaRef)
	}
	return items, nil
}

// ReportSchema returns the request schema of a report of the given role.
func (s *Spec) ReportSchema(role string) (*openapi3.Schema, error) {
	name := map[string]string{
		RoleClient: "ClientReportRequest",
		RoleServer: "ServerReportRequest",
	}[role]
	if name == "" {
		return nil, fmt.Errorf("role %q is not CLIENT or SERVER", role)
	}
	schema, ok := s.Doc.Components.Schemas[name]
	if !ok || schema.Value == nil {
		return nil, fmt.Errorf("PCM OpenAPI document has no schema %s", name)
	}
	return schema.Value, nil
}
