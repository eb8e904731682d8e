// Package ofb reports API interactions to the Open Finance Brasil metrics
// platform (Plataforma de Coleta de Métricas, PCM), private report API, as
// specified by the PCM OpenAPI document version 3.1.0.
//
// NewReport maps an outbox.Interaction to a Report and rejects, with
// ErrInvalidReport, any report that the PCM schema or endpoint allow-list
// would refuse. CheckReport applies the PCM's time window just before
// sending. Client fetches an OAuth2 client_credentials token over mutual TLS,
// caches it, and posts batches of up to MaxBatchSize reports with it.
//
// The package does not retry, schedule or persist anything: callers decide
// what to do with each *StatusError, transport error and DISCARDED item.
package ofb
