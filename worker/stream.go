package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// StreamConfig describes the JetStream stream that captures the CDC
// connector's core NATS publishes of outbox rows.
type StreamConfig struct {
	// DuplicateWindow is how long JetStream remembers Nats-Msg-Id headers to
	// drop republished messages. Zero means 2 minutes.
	DuplicateWindow time.Duration

	// MaxAge is how long messages are kept. Zero means 7 days, which outlasts
	// any consumer outage the regulator deadlines tolerate.
	MaxAge time.Duration

	// Name is the stream name. Required.
	Name string

	// Replicas is the stream's replica count. Zero means 1.
	Replicas int

	// Subjects are the captured subjects, such as
	// "sequin.appdb.public.outbox.*". Required.
	Subjects []string
}

// EnsureStream creates the stream or updates it to cfg. Several processes may
// call it at once.
func EnsureStream(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) (jetstream.Stream, error) {
	if cfg.Name == "" || len(cfg.Subjects) == 0 {
		return nil, errors.New("stream name and subjects are required")
	}
	if cfg.DuplicateWindow == 0 {
		cfg.DuplicateWindow = 2 * time.Minute
	}
	if cfg.MaxAge == 0 {
		cfg.MaxAge = 7 * 24 * time.Hour
	}
	if cfg.Replicas == 0 {
		cfg.Replicas = 1
	}
	stream, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:       cfg.Name,
		Subjects:   cfg.Subjects,
		Storage:    jetstream.FileStorage,
		Retention:  jetstream.LimitsPolicy,
		Duplicates: cfg.DuplicateWindow,
		MaxAge:     cfg.MaxAge,
		Replicas:   cfg.Replicas,
		Discard:    jetstream.DiscardOld,
	})
	if err != nil {
		return nil, fmt.Errorf("create or update stream %s on %v: %w", cfg.Name, cfg.Subjects, err)
	}
	return stream, nil
}
