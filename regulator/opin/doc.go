// Package opin reports API interactions to the Open Insurance Brasil metrics
// platform through its ingestion API ("API de ingestão da coleta de
// métricas"), as specified by the ingestion OpenAPI document version 1.0.13.
//
// NewItem maps an outbox.Interaction to an Item, the event of one role, and
// rejects with ErrInvalidEvent any event that the spec's eventBody schema or
// its description-only rules would refuse. Adapter implements
// regulator.Adapter: Report splits a batch by role, wraps each role's events
// in {"organisationId", "events"}, signs that body as a compact JWS with
// PS256 and the organisation's registered key, and posts it as
// application/jwt to the role's batch path.
//
// The package does not retry, schedule or persist anything: callers decide
// what to do with each *regulator.StatusError, transport error and DISCARDED
// item. The spec has no read-back operation, so Lookup is unsupported.
package opin
