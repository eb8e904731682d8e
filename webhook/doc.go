// Package webhook delivers outbox events to customer endpoints as signed
// HTTP requests, following the Standard Webhooks specification
// (https://www.standardwebhooks.com).
//
// It owns the webhook_subscriptions, webhook_messages, webhook_deliveries and
// webhook_attempts tables. The flow is:
//
//   - A durable JetStream consumer named "webhooks" reads the outbox stream.
//     In each batch's transaction it matches the new events against the
//     enabled subscriptions, stores each event's request body once, and
//     inserts one delivery row and one River job per match.
//   - The delivery worker sends one HTTP attempt per run of the job. It logs
//     every attempt in webhook_attempts and schedules the next one with River's
//     snooze, so River's own attempt counter only counts internal failures.
//     After the subscription's last attempt the delivery is dead-lettered.
//   - Among the pending deliveries of one subscription and one aggregate, only
//     the oldest is attempted. The others snooze until it is delivered or
//     dead-lettered. The check is a database query, so it holds across
//     service processes.
//   - Every connection is checked at dial time against the blocked address
//     ranges (loopback, private, link-local, multicast, metadata and other
//     special-purpose ranges) unless an explicit allow-list admits them, and
//     redirects are never followed.
//
// Subscriptions are read from the database on every batch and every attempt,
// so changes take effect without a restart. Every change to a subscription is
// appended to the audit ledger in the same transaction. Signing secrets are
// stored encrypted with AES-256-GCM under a key from the environment.
//
// The package never logs secrets, request bodies or full URLs: logs name the
// endpoint by host only.
package webhook
