package jobs

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/finnest/eventruntime/tenant"
)

// promptFlush seals a near-real-time tenant's items once its flush interval
// has passed since a map job committed them, instead of waiting for the next
// periodic flush, which River cannot run more often than once a second. It
// works in the process that mapped the items: if that process dies before
// the interval ends, the periodic flush of any process seals them, and two
// processes sealing at once take disjoint items (FOR UPDATE SKIP LOCKED).
type promptFlush struct {
	flush *FlushWorker

	mu    sync.Mutex
	armed map[tenantKey]bool
}

type tenantKey struct{ tenantID, ecosystem string }

func newPromptFlush(flush *FlushWorker) *promptFlush {
	return &promptFlush{flush: flush, armed: make(map[tenantKey]bool)}
}

// mapped arranges a flush of each tenant that has new pending items. Call it
// after the items are committed, with the map job's context: the seal takes
// the River client from it to enqueue submit jobs.
func (p *promptFlush) mapped(ctx context.Context, keys map[tenantKey]bool) {
	client, err := river.ClientFromContextSafely[pgx.Tx](ctx)
	if err != nil {
		return // not run by a River client, as in some tests
	}
	for key := range keys {
		p.mu.Lock()
		if p.armed[key] {
			p.mu.Unlock()
			continue
		}
		p.armed[key] = true
		p.mu.Unlock()
		go p.run(context.WithoutCancel(ctx), client, key)
	}
}

// run waits out the tenant's flush interval and seals what is due. Items
// mapped after it clears the armed mark arrange a flush of their own.
func (p *promptFlush) run(ctx context.Context, client *river.Client[pgx.Tx], key tenantKey) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-client.Stopped():
			cancel()
		case <-ctx.Done():
		}
	}()
	disarm := func() {
		p.mu.Lock()
		delete(p.armed, key)
		p.mu.Unlock()
	}

	config, err := tenant.Get(ctx, p.flush.Pool, key.tenantID, key.ecosystem)
	if err != nil || !config.Enabled || config.SubmissionMode != tenant.ModeNearRealTime {
		disarm()
		if err != nil && !errors.Is(err, tenant.ErrNotFound) && ctx.Err() == nil {
			p.flush.Logger.Warn("prompt flush could not read the tenant; the periodic flush will seal its items",
				"event", "flush.prompt_failed", "tenant_id", key.tenantID, "ecosystem", key.ecosystem, "error", err)
		}
		return
	}
	// A few milliseconds of slack for the database clock, which stamps
	// the items, running slightly ahead of this one.
	timer := time.NewTimer(config.FlushInterval + 5*time.Millisecond)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-ctx.Done():
		disarm()
		return
	}
	disarm()
	if err := p.flush.flushTenant(ctx, config, p.flush.now()); err != nil && ctx.Err() == nil {
		p.flush.Logger.Warn("prompt flush failed; the periodic flush will seal the items",
			"event", "flush.prompt_failed", "tenant_id", key.tenantID, "ecosystem", key.ecosystem, "error", err)
	}
}
