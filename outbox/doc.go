// Package outbox owns the event envelope and the producer API: a producer
// appends semantic events to the outbox table inside the same transaction as
// its business change, so an event exists exactly when the change committed.
//
// Append validates every event before writing: required fields, a known
// ecosystem, a payload size well under NATS's 1 MiB max_payload, and payloads
// that PostgreSQL's jsonb would reject (the escape \u0000, invalid UTF-8,
// unpaired surrogates). A rejected event fails the caller's transaction at
// append time, never later as a poison message in the pipeline.
//
// The package never reads the outbox back and never publishes anything: a
// CDC connector (Sequin) reads the outbox's publication and publishes each
// row to NATS.
package outbox
