package capture

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/finnest/eventruntime/tenant"
)

// DefaultDurabilityTTL is how long TenantDurability serves a setting before
// reading it again.
const DefaultDurabilityTTL = 5 * time.Second

// TenantDurability reads each tenant's capture_durability from tenant_config
// and caches it for TTL, so a change applies within TTL without a restart.
//
// A setting is read synchronously the first time a tenant is seen, and in
// the background after it expires, while the old value is served. When a
// read fails, the last value read stays in use and the read is retried after
// TTL. A tenant with no readable setting yet, or no tenant_config row, gets
// DurabilityFailClosed, the column's default.
type TenantDurability struct {
	logger      *slog.Logger
	querier     tenant.Querier
	readTimeout time.Duration
	ttl         time.Duration

	mu      sync.Mutex
	entries map[durabilityKey]*durabilityEntry
}

type durabilityKey struct{ tenantID, ecosystem string }

type durabilityEntry struct {
	expires    time.Time
	refreshing bool
	value      string
}

// NewTenantDurability returns a cache over querier, usually the service's
// pool. A ttl of zero means DefaultDurabilityTTL, and a nil logger discards
// read failures.
func NewTenantDurability(querier tenant.Querier, ttl time.Duration, logger *slog.Logger) *TenantDurability {
	if ttl <= 0 {
		ttl = DefaultDurabilityTTL
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &TenantDurability{
		logger:      logger,
		querier:     querier,
		readTimeout: time.Second,
		ttl:         ttl,
		entries:     map[durabilityKey]*durabilityEntry{},
	}
}

// CaptureDurability returns DurabilityFailClosed or DurabilityFailOpen for the
// tenant. It never fails: see the type's documentation for what it returns
// when the database cannot be read.
func (d *TenantDurability) CaptureDurability(ctx context.Context, tenantID, ecosystem string) string {
	key := durabilityKey{tenantID, ecosystem}
	now := time.Now()

	d.mu.Lock()
	entry, ok := d.entries[key]
	if ok && (now.Before(entry.expires) || entry.refreshing) {
		value := entry.value
		d.mu.Unlock()
		return value
	}
	first := !ok
	if first {
		entry = &durabilityEntry{value: DurabilityFailClosed}
		d.entries[key] = entry
	}
	entry.refreshing = true
	value := entry.value
	d.mu.Unlock()

	if first {
		return d.refresh(context.WithoutCancel(ctx), key, entry)
	}
	go d.refresh(context.WithoutCancel(ctx), key, entry)
	return value
}

// refresh reads one setting into entry and returns the value in use after it.
func (d *TenantDurability) refresh(ctx context.Context, key durabilityKey, entry *durabilityEntry) string {
	ctx, cancel := context.WithTimeout(ctx, d.readTimeout)
	defer cancel()
	config, err := tenant.Get(ctx, d.querier, key.tenantID, key.ecosystem)

	d.mu.Lock()
	defer d.mu.Unlock()
	entry.refreshing = false
	entry.expires = time.Now().Add(d.ttl)
	switch {
	case err == nil:
		entry.value = config.CaptureDurability
	case errors.Is(err, tenant.ErrNotFound):
		entry.value = DurabilityFailClosed
	default:
		d.logger.Warn("capture durability not read; keeping the last value", "event", "capture.durability_read_failed",
			"tenant_id", key.tenantID, "ecosystem", key.ecosystem, "value", entry.value, "error", err)
	}
	return entry.value
}
