// Package audit appends to and verifies the audit_ledger table, the record
// of who changed which setting. The ledger is one hash chain across all
// tenants: each row stores the previous row's hash and a hash over its own
// fields, so an altered, removed or reordered row breaks the chain at a row
// that Verify reports.
//
// The ledger stores hashes of the old and new values, never the values. The
// database rejects UPDATE, DELETE and TRUNCATE on the table with triggers.
package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/finnest/eventruntime/internal/canonicaljson"
)

// GenesisHash is the prev_hash of the first row of the chain.
const GenesisHash = "0000000000000000000000000000000000000000000000000000000000000000"

// chainLockKey is the transaction-level advisory lock that serialises
// appends, so concurrent transactions extend one chain instead of forking it.
const chainLockKey int64 = 0x61756469745f6c67 // "audit_lg"

// ErrIsolation is returned by Append when the transaction is not READ
// COMMITTED. A snapshot taken before the advisory lock could miss the last
// committed row and fork the chain.
var ErrIsolation = errors.New("audit: Append requires a READ COMMITTED transaction")

// Entry is one change to record. Old and New are the values before and after
// the change, marshalled with encoding/json and hashed in canonical form. Nil
// means no value, as in Old of a creation. Callers must remove secrets from
// Old and New or replace them with fingerprints, because a hash of a
// low-entropy secret can be guessed.
type Entry struct {
	Action    string
	Actor     string
	Ecosystem string
	New       any
	Old       any
	Subject   string
	TenantID  string
}

// Row is one stored ledger row.
type Row struct {
	Action    string
	Actor     string
	CreatedAt time.Time
	Ecosystem string
	ID        int64
	NewHash   string
	OldHash   string
	PrevHash  string
	RowHash   string
	Subject   string
	TenantID  string
}

// Append inserts entry as the next row of the chain inside tx, which must be
// READ COMMITTED. It holds a transaction-level advisory lock until tx ends,
// so appends from other transactions wait for tx to commit or roll back.
func Append(ctx context.Context, tx pgx.Tx, entry Entry) error {
	for _, field := range []struct{ name, value string }{
		{"tenant_id", entry.TenantID},
		{"ecosystem", entry.Ecosystem},
		{"actor", entry.Actor},
		{"action", entry.Action},
		{"subject", entry.Subject},
	} {
		if strings.TrimSpace(field.value) == "" {
			return fmt.Errorf("audit: %s is missing", field.name)
		}
	}

	var isolation string
	if err := tx.QueryRow(ctx, "SELECT current_setting('transaction_isolation')").Scan(&isolation); err != nil {
		return fmt.Errorf("audit: read transaction isolation: %w", err)
	}
	if isolation != "read committed" {
		return fmt.Errorf("%w (got %s)", ErrIsolation, isolation)
	}

	oldHash, err := valueHash(entry.Old)
	if err != nil {
		return fmt.Errorf("audit: hash old value of %s: %w", entry.Subject, err)
	}
	newHash, err := valueHash(entry.New)
	if err != nil {
		return fmt.Errorf("audit: hash new value of %s: %w", entry.Subject, err)
	}

	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", chainLockKey); err != nil {
		return fmt.Errorf("audit: lock the chain: %w", err)
	}
	// The statement snapshot is taken after the lock is granted, so under
	// READ COMMITTED it contains the last row committed by the lock's previous
	// holder.
	prevHash := GenesisHash
	err = tx.QueryRow(ctx, "SELECT row_hash FROM audit_ledger ORDER BY id DESC LIMIT 1").Scan(&prevHash)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("audit: read the last row: %w", err)
	}
	// The id is taken under the lock, so ids grow in chain order.
	row := Row{
		Action:    entry.Action,
		Actor:     entry.Actor,
		CreatedAt: time.Now().UTC().Truncate(time.Microsecond),
		Ecosystem: entry.Ecosystem,
		NewHash:   newHash,
		OldHash:   oldHash,
		PrevHash:  prevHash,
		Subject:   entry.Subject,
		TenantID:  entry.TenantID,
	}
	if err := tx.QueryRow(ctx, "SELECT nextval(pg_get_serial_sequence('audit_ledger', 'id'))").Scan(&row.ID); err != nil {
		return fmt.Errorf("audit: allocate a row id: %w", err)
	}
	if row.RowHash, err = rowHash(row); err != nil {
		return err
	}

	_, err = tx.Exec(ctx, `
		INSERT INTO audit_ledger (id, tenant_id, ecosystem, actor, action, subject, old_hash, new_hash,
		                          prev_hash, row_hash, created_at)
		OVERRIDING SYSTEM VALUE
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`,
		row.ID, row.TenantID, row.Ecosystem, row.Actor, row.Action, row.Subject,
		nullable(row.OldHash), nullable(row.NewHash), row.PrevHash, row.RowHash, row.CreatedAt)
	if err != nil {
		return fmt.Errorf("audit: insert row for %s %s: %w", entry.Action, entry.Subject, err)
	}
	return nil
}

// Querier is the part of pgx that Verify uses; a pool, connection or
// transaction satisfies it.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// VerifyResult is the outcome of Verify.
type VerifyResult struct {
	// FirstBrokenID is the id of the first row whose prev_hash or row_hash
	// does not match, or zero when the chain is intact.
	FirstBrokenID int64

	// Reason is why FirstBrokenID is broken, or empty.
	Reason string

	// Rows is how many rows were checked, up to and including the first
	// broken one.
	Rows int64
}

// Intact reports whether every row checked out.
func (r VerifyResult) Intact() bool { return r.FirstBrokenID == 0 }

// Verify reads the whole ledger in id order and recomputes the chain. A
// broken chain is reported in the result, not as an error; the error is for
// failed queries.
func Verify(ctx context.Context, q Querier) (VerifyResult, error) {
	var result VerifyResult
	rows, err := q.Query(ctx, `
		SELECT id, tenant_id, ecosystem, actor, action, subject, coalesce(old_hash, ''),
		       coalesce(new_hash, ''), prev_hash, row_hash, created_at
		FROM audit_ledger ORDER BY id`)
	if err != nil {
		return result, fmt.Errorf("audit: read ledger: %w", err)
	}
	defer rows.Close()

	previous := GenesisHash
	for rows.Next() {
		var row Row
		if err := rows.Scan(&row.ID, &row.TenantID, &row.Ecosystem, &row.Actor, &row.Action, &row.Subject,
			&row.OldHash, &row.NewHash, &row.PrevHash, &row.RowHash, &row.CreatedAt); err != nil {
			return result, fmt.Errorf("audit: read ledger row: %w", err)
		}
		result.Rows++
		if row.PrevHash != previous {
			result.FirstBrokenID = row.ID
			result.Reason = "prev_hash does not match the previous row's row_hash (a row was removed, inserted or reordered)"
			return result, nil
		}
		want, err := rowHash(row)
		if err != nil {
			return result, err
		}
		if want != row.RowHash {
			result.FirstBrokenID = row.ID
			result.Reason = "row_hash does not match the row's fields (the row was altered)"
			return result, nil
		}
		previous = row.RowHash
	}
	if err := rows.Err(); err != nil {
		return result, fmt.Errorf("audit: read ledger: %w", err)
	}
	return result, nil
}

// rowHash returns the SHA-256 of the canonical JSON of every field of row
// except row_hash itself, with created_at in UTC at microsecond precision,
// as PostgreSQL stores it.
func rowHash(row Row) (string, error) {
	fields := map[string]any{
		"action":     row.Action,
		"actor":      row.Actor,
		"created_at": row.CreatedAt.UTC().Truncate(time.Microsecond).Format(time.RFC3339Nano),
		"ecosystem":  row.Ecosystem,
		"id":         row.ID,
		"new_hash":   row.NewHash,
		"old_hash":   row.OldHash,
		"prev_hash":  row.PrevHash,
		"subject":    row.Subject,
		"tenant_id":  row.TenantID,
	}
	encoded, err := json.Marshal(fields)
	if err != nil {
		return "", fmt.Errorf("audit: encode row %d: %w", row.ID, err)
	}
	canonical, err := canonicaljson.Marshal(encoded)
	if err != nil {
		return "", fmt.Errorf("audit: canonicalize row %d: %w", row.ID, err)
	}
	return canonicaljson.SHA256(canonical), nil
}

// valueHash returns the SHA-256 of value's canonical JSON, or "" for nil.
func valueHash(value any) (string, error) {
	if value == nil {
		return "", nil
	}
	encoded, err := json.Marshal(value)
	if err != nil {
		return "", err
	}
	canonical, err := canonicaljson.Marshal(encoded)
	if err != nil {
		return "", err
	}
	return canonicaljson.SHA256(canonical), nil
}

// ValueHash returns the hash Append stores for value, so a caller holding a
// value can check it against a ledger row. It returns "" for nil.
func ValueHash(value any) (string, error) { return valueHash(value) }

func nullable(text string) *string {
	if text == "" {
		return nil
	}
	return &text
}
