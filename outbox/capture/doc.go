// Package capture records calls to and from regulated APIs as
// pcm.interaction.recorded events in the outbox, for the regulator's
// reports. Recorder.Middleware captures the calls this platform serves (role
// SERVER) and Recorder.Transport the calls it makes to other participants
// (role CLIENT).
//
// # Wiring
//
// Wrap the whole mux once:
//
//	writer := outbox.NewWriter(pool, outbox.WriterConfig{})
//	recorder, err := capture.New(capture.Config{
//		Durability:    capture.NewTenantDurability(pool, 0, logger),
//		Logger:        logger,
//		ResolveServer: resolveTenant,
//		Writer:        writer,
//	})
//	server := &http.Server{Handler: recorder.Middleware(mux)}
//
// Every request whose path matches a template of the allow-list
// (ofb.PrivateReportsAllowlist by default) is captured with that template as
// its endpoint, so a route is reported from the day it is added to the mux.
// A request that matches no template is counted in Stats.UnmatchedRoutes and
// logged with its mux pattern, never with its real path, which may hold ids.
// The tenant and the two organisation ids come from Config.ResolveServer,
// because each service maps a request to a tenant in its own way (by host,
// certificate or token).
//
// # Durability
//
// A captured event counts as captured only once it is durable: the request
// goroutine hands the event to the outbox.Writer and waits for the group
// commit that holds it. No event waits in memory on its own, so a crash can
// lose only captures whose requests were never answered.
//
// A capture that cannot be persisted within Config.PersistTimeout is counted
// in Stats.PersistFailures, logged with its event id, and not counted as
// captured. What happens to the call then is the tenant's capture durability
// (tenant_config.capture_durability, read through TenantDurability):
//
//   - fail_closed (the default): the client gets 503 in place of the
//     handler's response. No call is served without its evidence, at the cost
//     of failing business calls while the database is unavailable. The
//     handler has already run, so its side effects stay: the 503 tells the
//     client the outcome is unknown, as a 503 from a proxy would.
//   - fail_open: the client gets the handler's response, and the call is
//     missing from the regulator's reports. Availability is kept at the cost
//     of evidence, and the persist failure counter is the only record.
//
// To make fail_closed enforceable, the middleware holds the status, headers
// and the first Config.MaxBufferedBytes of the body (1 MiB by default) and
// persists the capture before anything is sent. A handler that writes more
// or calls Flush makes the middleware persist at that point, so the event
// is still durable before the first byte leaves. Such an event records the
// time until that point as its processTimespan, not the whole response. Each
// request in flight holds at most MaxBufferedBytes of body in memory.
//
// Outgoing calls are different: the other participant has already acted on
// the call when its response arrives, so Transport always returns the
// response and only counts and logs a failed capture.
//
// # Telemetry
//
// Stats returns the counters for tests. The same counts go to OpenTelemetry
// instruments of the meter named InstrumentationName, with the role and the
// ecosystem as their only attributes.
package capture
