package jobs

import (
	"context"
	"errors"
	"fmt"
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
//
// One goroutine per tenant and ecosystem waits at a time. After each seal it
// looks for items still pending, such as items another process or the
// periodic flush left behind, and waits again until the oldest is due.
type promptFlush struct {
	flush *FlushWorker

	mu    sync.Mutex
	armed map[tenantKey]bool
	// skip holds tenants found not to be near-real-time, until when to
	// take them at their word instead of reading their configuration.
	skip map[tenantKey]time.Time
}

type tenantKey struct{ tenantID, ecosystem string }

// promptSkipFor is how long a tenant found not to be near-real-time is left
// to the periodic flush before its configuration is read again.
const promptSkipFor = 10 * time.Second

// promptSlack is added to each wait so the seal finds the oldest item due on
// the database clock despite the time the seal's own queries take.
const promptSlack = 5 * time.Millisecond

// promptRetry is the shortest wait between rounds.
const promptRetry = 20 * time.Millisecond

func newPromptFlush(flush *FlushWorker) *promptFlush {
	return &promptFlush{flush: flush, armed: make(map[tenantKey]bool), skip: make(map[tenantKey]time.Time)}
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
		if p.arm(key) {
			go p.run(context.WithoutCancel(ctx), client, key)
		}
	}
}

// arm marks key as having a waiting goroutine and reports whether the caller
// is to be that goroutine.
func (p *promptFlush) arm(key tenantKey) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.armed[key] || time.Now().Before(p.skip[key]) {
		return false
	}
	p.armed[key] = true
	return true
}

func (p *promptFlush) disarm(key tenantKey) {
	p.mu.Lock()
	delete(p.armed, key)
	p.mu.Unlock()
}

// run waits out the tenant's flush interval, seals what is due and repeats
// while items are pending. It clears the armed mark before looking for
// pending items, so an item committed after the look arms a goroutine of its
// own.
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
	armed := true
	defer func() {
		if armed {
			p.disarm(key)
		}
		if v := recover(); v != nil {
			p.warn(key, fmt.Errorf("panic: %v", v))
		}
	}()

	var wait time.Duration
	for first := true; ; first = false {
		// Read the configuration on every round, so a tenant switched to
		// scheduled or disabled meanwhile is left to the periodic flush.
		config, err := tenant.Get(ctx, p.flush.Pool, key.tenantID, key.ecosystem)
		if err != nil || !config.Enabled || config.SubmissionMode != tenant.ModeNearRealTime {
			if err == nil || errors.Is(err, tenant.ErrNotFound) {
				p.mu.Lock()
				p.skip[key] = time.Now().Add(promptSkipFor)
				p.mu.Unlock()
			} else if ctx.Err() == nil {
				p.warn(key, err)
			}
			return
		}
		if first {
			wait = config.FlushInterval
		}
		timer := time.NewTimer(wait + promptSlack)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return
		}
		if err := p.flush.flushTenant(ctx, config, p.flush.now()); err != nil {
			if ctx.Err() == nil {
				p.warn(key, err)
			}
			return
		}
		p.disarm(key)
		armed = false
		var pending bool
		var seconds float64
		err = p.flush.Pool.QueryRow(ctx, `
			SELECT count(*) > 0,
			       coalesce(extract(epoch FROM min(created_at) + $3 * interval '1 microsecond' - now()), 0)::float8
			FROM report_items WHERE tenant_id = $1 AND ecosystem = $2 AND state = 'pending'`,
			key.tenantID, key.ecosystem, config.FlushInterval.Microseconds()).Scan(&pending, &seconds)
		if err != nil {
			if ctx.Err() == nil {
				p.warn(key, err)
			}
			return
		}
		if !pending || !p.arm(key) {
			return
		}
		armed = true
		// Items already due are held by another process's seal; give it
		// a moment instead of spinning.
		wait = max(time.Duration(seconds*float64(time.Second)), promptRetry)
	}
}

func (p *promptFlush) warn(key tenantKey, err error) {
	p.flush.Logger.Warn("prompt flush failed; the periodic flush will seal the items",
		"event", "flush.prompt_failed", "tenant_id", key.tenantID, "ecosystem", key.ecosystem, "error", err)
}
