package sequin

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ErrSlotMissing is returned by SlotMonitor.Sample when the replication slot
// does not exist.
var ErrSlotMissing = errors.New("replication slot does not exist")

// SlotStatus is one reading of the outbox's replication slot.
type SlotStatus struct {
	// Active is true while a CDC connector streams from the slot.
	Active bool

	// ConfirmedAge is how long the slot's confirmed position has not moved
	// while WAL was written past it. Zero when the connector is caught up.
	ConfirmedAge time.Duration

	// ConfirmedLagBytes is how much WAL the connector has not confirmed.
	ConfirmedLagBytes int64

	// RetainedBytes is how much WAL the slot keeps on disk.
	RetainedBytes int64

	// WALStatus is PostgreSQL's wal_status: reserved, extended, unreserved or
	// lost. Lost means the slot can no longer stream: rows were skipped.
	WALStatus string
}

// SlotMonitor reads the replication slot the CDC connector streams from.
// PostgreSQL keeps every WAL segment the slot has not confirmed, so a stalled
// connector fills the disk unless max_slot_wal_keep_size bounds it, in which
// case the slot is lost past the bound.
type SlotMonitor struct {
	Pool *pgxpool.Pool
	Slot string

	mu          sync.Mutex
	lastLSN     string
	lastAdvance time.Time
}

// Sample reads the slot's state.
func (m *SlotMonitor) Sample(ctx context.Context) (SlotStatus, error) {
	var status SlotStatus
	var confirmed *string
	var walStatus *string
	err := m.Pool.QueryRow(ctx, `
		SELECT active,
		       coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint,
		       coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint,
		       confirmed_flush_lsn::text, wal_status
		FROM pg_replication_slots WHERE slot_name = $1`, m.Slot).
		Scan(&status.Active, &status.RetainedBytes, &status.ConfirmedLagBytes, &confirmed, &walStatus)
	if errors.Is(err, pgx.ErrNoRows) {
		return status, fmt.Errorf("%w: %s", ErrSlotMissing, m.Slot)
	}
	if err != nil {
		return status, fmt.Errorf("read replication slot %s: %w", m.Slot, err)
	}
	if walStatus != nil {
		status.WALStatus = *walStatus
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	lsn := ""
	if confirmed != nil {
		lsn = *confirmed
	}
	if lsn != m.lastLSN || m.lastAdvance.IsZero() || status.ConfirmedLagBytes == 0 {
		m.lastLSN, m.lastAdvance = lsn, now
	}
	status.ConfirmedAge = now.Sub(m.lastAdvance)
	return status, nil
}
