// Package sequin holds everything specific to Sequin, the change data capture
// (CDC) product that carries outbox rows from PostgreSQL to NATS, so another
// CDC tool could replace it without touching the NATS consumers.
//
// Sequin reads the outbox table through a pgoutput logical replication slot on
// the publication eventruntime_outbox, and publishes each inserted row with a
// core NATS publish to "sequin.<database>.public.outbox.insert". The
// publish is fire-and-forget: only a JetStream stream that captures the
// subject keeps the message, and Sequin never learns whether one did.
//
// The package provides:
//
//   - Decode, which turns a Sequin NATS message into an outbox.Event with its
//     metadata, and wraps ErrMalformed in every error so a consumer can
//     dead-letter a message that will never decode.
//   - Encode, Subject and IdempotencyKey, which build the body, subject and
//     Nats-Msg-Id header the way Sequin 0.14 does.
//   - sequin.yaml, the Sequin configuration for a real deployment: one
//     database, the slot and publication, and a NATS sink on the outbox table
//     only.
//   - StandIn, a small replacement for Sequin used in development and tests.
//
// A real deployment runs Sequin with the shipped sequin.yaml. The stand-in
// only serves development and tests: it publishes the same subjects, headers
// and bodies from the same slot protocol, but it has no backfills, no web
// console and no retry queue of its own.
package sequin
