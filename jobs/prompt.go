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
// has passed since a map job committed them. Without it they would wait for
// the periodic flush, which River runs at most once a second. It runs in the
// process that mapped the items. If that process dies first, the periodic
// flush of any process seals them. Two processes sealing at once take
// disjoint items, because the seal locks with FOR UPDATE SKIP LOCKED.
//
// At most one goroutine per tenant and ecosystem waits at a time. After each
// seal it checks for items still pending, such as items another process
// skipped, and waits again until the oldest is due.
type promptFlush struct {
	flush *FlushWorker

	mu    sync.Mutex
	armed map[tenantKey]bool
	// skip maps tenants found not to be near-real-time to the time their
	// configuration is to be read again.
	skip map[tenantKey]time.Time
}

type tenantKey struct{ tenantID, ecosystem string }

// promptSkipFor is how long a tenant found not to be near-real-time is left
// to the periodic flush before its configuration is read again.
const promptSkipFor = 10 * time.Second

// promptSlack is added to each wait, so the oldest item is due on the
// database clock by the time the seal checks it.
const promptSlack = 5 * time.Millisecond

// promptRetry is the minimum wait between rounds.
const promptRetry = 20 * time.Millisecond

func newPromptFlush(flush *FlushWorker) *promptFlush {
	return &promptFlush{flush: flush, armed: make(map[tenantKey]bool), skip: make(map[tenantKey]time.Time)}
}

// mapped starts a prompt flush for each tenant with new pending items, unless
// one is waiting already. Call it after the items are committed, with the map
// job's context, because the seal takes the River client from it.
func (p *promptFlush) mapped(ctx context.Context, keys map[tenantKey]bool) {
	client, err := river.ClientFromContextSafely[pgx.Tx](ctx)
	if err != nil {
		return // the job was not run by a River client, as in some tests
	}
	for key := range keys {
		if p.arm(key) {
			go p.run(context.WithoutCancel(ctx), client, key)
		}
	}
}

// arm marks key as having a waiting goroutine and reports whether the caller
// is that goroutine.
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

// run waits for the tenant's flush interval, seals what is due and repeats
// while items are pending. It clears the armed mark before it checks for
// pending items, so an item committed after the check starts a new run.
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
			p.warn(key, fmt.Errorf("prompt flush panicked: %v", v))
		}
	}()

	var wait time.Duration
	for first := true; ; first = false {
		// Read the configuration every round, so a tenant switched to
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
		// The oldest pending item by id, through the pending-items index,
		// so the check stays cheap while thousands of items are pending.
		var seconds float64
		err = p.flush.Pool.QueryRow(ctx, `
			SELECT extract(epoch FROM created_at + $3 * interval '1 microsecond' - now())::float8
			FROM report_items WHERE tenant_id = $1 AND ecosystem = $2 AND state = 'pending'
			ORDER BY id LIMIT 1`,
			key.tenantID, key.ecosystem, config.FlushInterval.Microseconds()).Scan(&seconds)
		if errors.Is(err, pgx.ErrNoRows) || (err == nil && !p.arm(key)) {
			return
		}
		if err != nil {
			if ctx.Err() == nil {
				p.warn(key, err)
			}
			return
		}
		armed = true
		// Items already due are locked by another process's seal, so wait
		// a moment for it instead of retrying at once.
		wait = max(time.Duration(seconds*float64(time.Second)), promptRetry)
	}
}

// warn logs a failed prompt flush of key.
func (p *promptFlush) warn(key tenantKey, err error) {
	p.flush.Logger.Warn("prompt flush failed; the periodic flush will seal the items",
		"event", "flush.prompt_failed", "tenant_id", key.tenantID, "ecosystem", key.ecosystem, "error", err)
}
