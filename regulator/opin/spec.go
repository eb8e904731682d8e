package opin

import (
	"context"
	"fmt"
	"sync"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/regulator"
)

// Event roles, as in outbox.Interaction.
const (
	RoleClient = outbox.RoleClient
	RoleServer = outbox.RoleServer
)

// Batch paths of the ingestion API. The role of every event in a request
// comes from the path: the server path takes SERVER events and the client
// path CLIENT events.
const (
	ClientBatchPath = "/report-api/v1/client-batch"
	ServerBatchPath = "/report-api/v1/server-batch"
)

// MaxBatchSize is the maximum number of events in one batch request. The
// platform answers 413 above it.
const MaxBatchSize = 5000

// Schema names of the ingestion spec.
const (
	batchBodySchema = "batchBody"
	eventBodySchema = "eventBody"
)

// Spec is the loaded ingestion OpenAPI document.
type Spec struct {
	// Doc is the parsed document.
	Doc *openapi3.T

	// ValidationErr is the result of validating the whole document without
	// its examples. It is informational: request validation works even when
	// it is not nil.
	ValidationErr error
}

var embeddedSpec = sync.OnceValues(func() (*Spec, error) {
	return LoadSpec(regulator.OPINSpec())
})

// EmbeddedSpec returns the embedded ingestion spec version 1.0.13, loaded
// once by LoadSpec. Callers must not modify it.
func EmbeddedSpec() (*Spec, error) { return embeddedSpec() }

// LoadSpec parses an ingestion OpenAPI document and checks that it has the
// batch operations and schemas this package uses.
func LoadSpec(data []byte) (*Spec, error) {
	doc, err := openapi3.NewLoader().LoadFromData(data)
	if err != nil {
		return nil, fmt.Errorf("load OPIN ingestion OpenAPI document: %w", err)
	}
	spec := &Spec{Doc: doc}
	spec.ValidationErr = doc.Validate(context.Background(), openapi3.DisableExamplesValidation())

	for _, path := range []string{ClientBatchPath, ServerBatchPath} {
		item := doc.Paths.Value(path)
		if item == nil || item.Post == nil || item.Post.RequestBody == nil ||
			item.Post.RequestBody.Value.Content.Get("application/jwt") == nil {
			return nil, fmt.Errorf("OPIN ingestion OpenAPI document has no POST %s with an application/jwt body", path)
		}
	}
	for _, name := range []string{batchBodySchema, eventBodySchema} {
		if _, err := spec.schema(name); err != nil {
			return nil, err
		}
	}
	return spec, nil
}

func (s *Spec) schema(name string) (*openapi3.Schema, error) {
	schema, ok := s.Doc.Components.Schemas[name]
	if !ok || schema.Value == nil {
		return nil, fmt.Errorf("OPIN ingestion OpenAPI document has no schema %s", name)
	}
	return schema.Value, nil
}

// EventSchema returns the schema of one event of a batch (eventBody).
func (s *Spec) EventSchema() *openapi3.Schema {
	schema, _ := s.schema(eventBodySchema)
	return schema
}

// BatchSchema returns the schema of a decoded batch request body
// (batchBody).
func (s *Spec) BatchSchema() *openapi3.Schema {
	schema, _ := s.schema(batchBodySchema)
	return schema
}

// Endpoints returns the endpoint templates that an event may name, in the
// spec's order.
func (s *Spec) Endpoints() []string {
	property := s.EventSchema().Properties["endpoint"]
	if property == nil || property.Value == nil {
		return nil
	}
	endpoints := make([]string, 0, len(property.Value.Enum))
	for _, value := range property.Value.Enum {
		if endpoint, ok := value.(string); ok {
			endpoints = append(endpoints, endpoint)
		}
	}
	return endpoints
}

// BatchPath returns the batch path of a role, or "" for an unknown role.
func BatchPath(role string) string {
	switch role {
	case RoleClient:
		return ClientBatchPath
	case RoleServer:
		return ServerBatchPath
	default:
		return ""
	}
}
