// Package chaos holds scripted fault scenarios against the whole pipeline:
// the producer API, the Sequin stand-in, embedded NATS, PostgreSQL, River
// jobs, the fake regulator and customer webhook endpoints. The scenarios are
// Go tests in this folder, and each ends with an automatic verdict: no lost
// event, no duplicate submission, and recovery within a bound.
//
// Every scenario starts its own servers on 127.0.0.1 and stops them when it
// ends. The default `go test` run uses short fault durations (seconds); the
// build tag chaos (`make chaos`) runs the same scenarios with faults lasting
// minutes.
package chaos
