package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/finnest/eventruntime/audit"
	"github.com/finnest/eventruntime/outbox"
)

// Subscription states.
const (
	StateEnabled  = "enabled"
	StateDisabled = "disabled"
)

// SystemActor is the audit actor of changes the service makes by itself,
// such as disabling a subscription whose endpoint returned 410 Gone.
const SystemActor = "eventruntime"

// ErrSubscriptionNotFound is returned when no subscription has the id.
var ErrSubscriptionNotFound = errors.New("webhook subscription not found")

// ErrInvalidSubscription is wrapped by every validation error of a
// subscription.
var ErrInvalidSubscription = errors.New("invalid webhook subscription")

// Subscription is one customer endpoint of a tenant.
type Subscription struct {
	CreatedAt time.Time

	// DisabledReason is why State is StateDisabled, or empty.
	DisabledReason string

	Ecosystem string

	// EventTypes are the event types delivered: an exact type such as
	// "claim.approved", a prefix ending in ".*" such as "claim.*", or "*"
	// for every type.
	EventTypes []string

	ID          uuid.UUID
	RetryPolicy RetryPolicy

	// Secrets are the signing secrets. Each request carries a signature for
	// every secret active at the time of the attempt.
	Secrets []Secret

	// State is StateEnabled or StateDisabled.
	State     string
	TenantID  string
	UpdatedAt time.Time

	// URL is the endpoint, http or https.
	URL string
}

// Matches reports whether the subscription wants events of eventType.
func (s *Subscription) Matches(eventType string) bool {
	for _, pattern := range s.EventTypes {
		if pattern == "*" || pattern == eventType {
			return true
		}
		if prefix, ok := strings.CutSuffix(pattern, "*"); ok && strings.HasSuffix(prefix, ".") &&
			strings.HasPrefix(eventType, prefix) {
			return true
		}
	}
	return false
}

// auditView returns the value the audit ledger hashes for a subscription:
// every field except the secrets, which appear as fingerprints.
func (s *Subscription) auditView() map[string]any {
	fingerprints := make([]map[string]any, len(s.Secrets))
	for i, secret := range s.Secrets {
		fingerprints[i] = map[string]any{
			"fingerprint": secret.Fingerprint(),
			"created_at":  secret.CreatedAt.UTC().Format(time.RFC3339Nano),
			"expires_at":  formatOptionalTime(secret.ExpiresAt),
		}
	}
	return map[string]any{
		"disabled_reason": s.DisabledReason,
		"ecosystem":       s.Ecosystem,
		"event_types":     s.EventTypes,
		"id":              s.ID.String(),
		"retry_policy":    s.RetryPolicy,
		"secrets":         fingerprints,
		"state":           s.State,
		"tenant_id":       s.TenantID,
		"url":             s.URL,
	}
}

func formatOptionalTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// validateURL checks an endpoint URL. It rejects literal addresses in
// blocked ranges early, unless allowed admits them, but the authoritative
// check runs at dial time on the resolved address.
func validateURL(raw string, allowed []netip.Prefix) error {
	parsed, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%w: URL is not valid: %v", ErrInvalidSubscription, err)
	}
	if parsed.Scheme != "https" && parsed.Scheme != "http" {
		return fmt.Errorf("%w: URL scheme %q is not http or https", ErrInvalidSubscription, parsed.Scheme)
	}
	if parsed.Host == "" || parsed.Hostname() == "" {
		return fmt.Errorf("%w: URL has no host", ErrInvalidSubscription)
	}
	if parsed.User != nil {
		return fmt.Errorf("%w: URL must not contain user information; use the signature to authenticate", ErrInvalidSubscription)
	}
	if parsed.Fragment != "" {
		return fmt.Errorf("%w: URL must not contain a fragment", ErrInvalidSubscription)
	}
	if addr, err := netip.ParseAddr(parsed.Hostname()); err == nil {
		if err := (addressGuard{allowed: allowed}).check(addr); err != nil {
			return fmt.Errorf("%w: %v", ErrInvalidSubscription, err)
		}
	}
	return nil
}

func validateEventTypes(types []string) error {
	if len(types) == 0 {
		return fmt.Errorf("%w: at least one event type is required", ErrInvalidSubscription)
	}
	for _, eventType := range types {
		if strings.TrimSpace(eventType) != eventType || eventType == "" {
			return fmt.Errorf("%w: event type %q is empty or has spaces", ErrInvalidSubscription, eventType)
		}
		if strings.Contains(strings.TrimSuffix(eventType, "*"), "*") {
			return fmt.Errorf("%w: event type %q may only end in *", ErrInvalidSubscription, eventType)
		}
		if strings.HasSuffix(eventType, "*") && eventType != "*" && !strings.HasSuffix(eventType, ".*") {
			return fmt.Errorf("%w: event type %q: a wildcard must follow a dot, as in claim.*", ErrInvalidSubscription, eventType)
		}
	}
	return nil
}

// Store reads and changes subscriptions. Every change is appended to the
// audit ledger in the same transaction.
type Store struct {
	// AllowedPrefixes admits literal URL addresses that would otherwise be
	// rejected; see Config.AllowedPrefixes.
	AllowedPrefixes []netip.Prefix

	Pool    *pgxpool.Pool
	Secrets *SecretBox
}

// CreateParams are the fields of a new subscription.
type CreateParams struct {
	Actor      string
	Ecosystem  string
	EventTypes []string
	// RetryPolicy is the retry schedule; the zero value means the defaults.
	RetryPolicy RetryPolicy
	// Secret is the signing secret in "whsec_<base64>" form. Empty means a
	// new random secret, returned in the subscription.
	Secret   string
	TenantID string
	URL      string
}

// Create validates and inserts a subscription, enabled.
func (s *Store) Create(ctx context.Context, params CreateParams) (*Subscription, error) {
	if params.TenantID == "" {
		return nil, fmt.Errorf("%w: tenant is required", ErrInvalidSubscription)
	}
	if params.Ecosystem != outbox.EcosystemOFB && params.Ecosystem != outbox.EcosystemOPIN {
		return nil, fmt.Errorf("%w: ecosystem %q is not %q or %q", ErrInvalidSubscription, params.Ecosystem,
			outbox.EcosystemOFB, outbox.EcosystemOPIN)
	}
	if err := validateURL(params.URL, s.AllowedPrefixes); err != nil {
		return nil, err
	}
	if err := validateEventTypes(params.EventTypes); err != nil {
		return nil, err
	}
	if err := params.RetryPolicy.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidSubscription, err)
	}
	secret := params.Secret
	if secret == "" {
		var err error
		if secret, err = NewSecret(); err != nil {
			return nil, err
		}
	}
	if _, err := ParseSecret(secret); err != nil {
		return nil, err
	}

	id, err := uuid.NewV7()
	if err != nil {
		return nil, fmt.Errorf("generate subscription id: %w", err)
	}
	now := time.Now().UTC().Truncate(time.Microsecond)
	sub := &Subscription{
		CreatedAt:   now,
		Ecosystem:   params.Ecosystem,
		EventTypes:  slices.Clone(params.EventTypes),
		ID:          id,
		RetryPolicy: params.RetryPolicy,
		Secrets:     []Secret{{CreatedAt: now, Value: secret}},
		State:       StateEnabled,
		TenantID:    params.TenantID,
		UpdatedAt:   now,
		URL:         params.URL,
	}
	err = pgx.BeginFunc(ctx, s.Pool, func(tx pgx.Tx) error {
		if err := s.insert(ctx, tx, sub); err != nil {
			return err
		}
		return audit.Append(ctx, tx, audit.Entry{
			TenantID: sub.TenantID, Ecosystem: sub.Ecosystem, Actor: params.Actor,
			Action: "webhook.subscription.created", Subject: subject(sub.ID), New: sub.auditView(),
		})
	})
	if err != nil {
		return nil, err
	}
	return sub, nil
}

func (s *Store) insert(ctx context.Context, tx pgx.Tx, sub *Subscription) error {
	sealed, err := s.Secrets.seal(sub.ID.String(), sub.Secrets)
	if err != nil {
		return err
	}
	policy, err := json.Marshal(sub.RetryPolicy)
	if err != nil {
		return fmt.Errorf("encode retry policy: %w", err)
	}
	_, err = tx.Exec(ctx, `
		INSERT INTO webhook_subscriptions (id, tenant_id, ecosystem, url, event_types, secrets, retry_policy,
		                                   state, created_at, updated_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)`,
		sub.ID, sub.TenantID, sub.Ecosystem, sub.URL, sub.EventTypes, sealed, policy, sub.State, sub.CreatedAt)
	if err != nil {
		return fmt.Errorf("insert webhook subscription %s: %w", sub.ID, err)
	}
	return nil
}

func subject(id uuid.UUID) string { return "webhook_subscription:" + id.String() }

const subscriptionColumns = `id, tenant_id, ecosystem, url, event_types, secrets, retry_policy, state,
	coalesce(disabled_reason, ''), created_at, updated_at`

// querier is the part of pgx this package reads through; a pool, connection
// or transaction satisfies it.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// scanSubscription reads one row of subscriptionColumns and decrypts its
// secrets.
func scanSubscription(row pgx.Row, box *SecretBox) (*Subscription, error) {
	var (
		sub    Subscription
		sealed []byte
		policy []byte
	)
	if err := row.Scan(&sub.ID, &sub.TenantID, &sub.Ecosystem, &sub.URL, &sub.EventTypes, &sealed, &policy,
		&sub.State, &sub.DisabledReason, &sub.CreatedAt, &sub.UpdatedAt); err != nil {
		return nil, err
	}
	var err error
	if sub.RetryPolicy, err = parseRetryPolicy(policy); err != nil {
		return nil, fmt.Errorf("subscription %s: %w", sub.ID, err)
	}
	if sub.Secrets, err = box.open(sub.ID.String(), sealed); err != nil {
		return nil, err
	}
	return &sub, nil
}

// getSubscription reads one subscription, locking its row FOR UPDATE when
// lock is set and q is a transaction.
func getSubscription(ctx context.Context, q querier, box *SecretBox, id uuid.UUID, lock bool) (*Subscription, error) {
	query := `SELECT ` + subscriptionColumns + ` FROM webhook_subscriptions WHERE id = $1`
	if lock {
		query += ` FOR UPDATE`
	}
	sub, err := scanSubscription(q.QueryRow(ctx, query, id), box)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%w: %s", ErrSubscriptionNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("read webhook subscription %s: %w", id, err)
	}
	return sub, nil
}

// Get returns the subscription with id, or an error wrapping
// ErrSubscriptionNotFound.
func (s *Store) Get(ctx context.Context, id uuid.UUID) (*Subscription, error) {
	return getSubscription(ctx, s.Pool, s.Secrets, id, false)
}

// List returns the subscriptions of tenantID, or of every tenant when it is
// empty, oldest first.
func (s *Store) List(ctx context.Context, tenantID string) ([]*Subscription, error) {
	rows, err := s.Pool.Query(ctx, `SELECT `+subscriptionColumns+` FROM webhook_subscriptions
		WHERE $1 = '' OR tenant_id = $1 ORDER BY created_at, id`, tenantID)
	if err != nil {
		return nil, fmt.Errorf("list webhook subscriptions: %w", err)
	}
	defer rows.Close()
	var subs []*Subscription
	for rows.Next() {
		sub, err := scanSubscription(rows, s.Secrets)
		if err != nil {
			return nil, err
		}
		subs = append(subs, sub)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list webhook subscriptions: %w", err)
	}
	return subs, nil
}

// update reads the subscription FOR UPDATE, applies change, writes it back
// and appends the change to the audit ledger, all in tx. A change that
// returns false leaves the row and the ledger untouched.
func update(ctx context.Context, tx pgx.Tx, box *SecretBox, id uuid.UUID, actor, action string,
	change func(sub *Subscription) (bool, error)) (*Subscription, error) {
	sub, err := getSubscription(ctx, tx, box, id, true)
	if err != nil {
		return nil, err
	}
	before := sub.auditView()
	changed, err := change(sub)
	if err != nil || !changed {
		return sub, err
	}
	sealed, err := box.seal(sub.ID.String(), sub.Secrets)
	if err != nil {
		return nil, err
	}
	policy, err := json.Marshal(sub.RetryPolicy)
	if err != nil {
		return nil, fmt.Errorf("encode retry policy: %w", err)
	}
	err = tx.QueryRow(ctx, `
		UPDATE webhook_subscriptions
		SET url = $2, event_types = $3, secrets = $4, retry_policy = $5, state = $6,
		    disabled_reason = nullif($7, ''), updated_at = now()
		WHERE id = $1
		RETURNING updated_at`,
		sub.ID, sub.URL, sub.EventTypes, sealed, policy, sub.State, sub.DisabledReason).Scan(&sub.UpdatedAt)
	if err != nil {
		return nil, fmt.Errorf("update webhook subscription %s: %w", sub.ID, err)
	}
	err = audit.Append(ctx, tx, audit.Entry{
		TenantID: sub.TenantID, Ecosystem: sub.Ecosystem, Actor: actor, Action: action,
		Subject: subject(sub.ID), Old: before, New: sub.auditView(),
	})
	if err != nil {
		return nil, err
	}
	return sub, nil
}

// Disable stops deliveries to the subscription. Its pending deliveries are
// dead-lettered when their next attempt comes, so they can be replayed after
// Enable. Disabling a disabled subscription changes nothing.
func (s *Store) Disable(ctx context.Context, id uuid.UUID, actor, reason string) (*Subscription, error) {
	if strings.TrimSpace(reason) == "" {
		return nil, fmt.Errorf("%w: a reason is required to disable a subscription", ErrInvalidSubscription)
	}
	var sub *Subscription
	err := pgx.BeginFunc(ctx, s.Pool, func(tx pgx.Tx) error {
		var err error
		sub, err = disableTx(ctx, tx, s.Secrets, id, actor, reason)
		return err
	})
	return sub, err
}

func disableTx(ctx context.Context, tx pgx.Tx, box *SecretBox, id uuid.UUID, actor, reason string) (*Subscription, error) {
	return update(ctx, tx, box, id, actor, "webhook.subscription.disabled", func(sub *Subscription) (bool, error) {
		if sub.State == StateDisabled {
			return false, nil
		}
		sub.State, sub.DisabledReason = StateDisabled, reason
		return true, nil
	})
}

// Enable resumes deliveries to the subscription. It does not replay what was
// dead-lettered while it was disabled.
func (s *Store) Enable(ctx context.Context, id uuid.UUID, actor string) (*Subscription, error) {
	var sub *Subscription
	err := pgx.BeginFunc(ctx, s.Pool, func(tx pgx.Tx) error {
		var err error
		sub, err = update(ctx, tx, s.Secrets, id, actor, "webhook.subscription.enabled", func(sub *Subscription) (bool, error) {
			if sub.State == StateEnabled {
				return false, nil
			}
			sub.State, sub.DisabledReason = StateEnabled, ""
			return true, nil
		})
		return err
	})
	return sub, err
}

// RotateSecret adds newSecret (a new random one when empty) and lets the
// secrets active now expire after overlap, so receivers can switch over
// while requests carry signatures for both. Secrets that have expired are
// removed. It returns the subscription with the new secret.
func (s *Store) RotateSecret(ctx context.Context, id uuid.UUID, actor, newSecret string, overlap time.Duration) (*Subscription, error) {
	if overlap < 0 {
		return nil, fmt.Errorf("%w: overlap %s is negative", ErrInvalidSubscription, overlap)
	}
	if newSecret == "" {
		var err error
		if newSecret, err = NewSecret(); err != nil {
			return nil, err
		}
	}
	if _, err := ParseSecret(newSecret); err != nil {
		return nil, err
	}
	var sub *Subscription
	err := pgx.BeginFunc(ctx, s.Pool, func(tx pgx.Tx) error {
		var err error
		sub, err = update(ctx, tx, s.Secrets, id, actor, "webhook.subscription.secret_rotated", func(sub *Subscription) (bool, error) {
			now := time.Now().UTC().Truncate(time.Microsecond)
			kept := make([]Secret, 0, len(sub.Secrets)+1)
			for _, secret := range sub.Secrets {
				if !secret.ActiveAt(now) {
					continue
				}
				if secret.Value == newSecret {
					return false, fmt.Errorf("%w: the new secret is already active", ErrInvalidSubscription)
				}
				expires := now.Add(overlap)
				if secret.ExpiresAt.IsZero() || expires.Before(secret.ExpiresAt) {
					secret.ExpiresAt = expires
				}
				kept = append(kept, secret)
			}
			sub.Secrets = append(kept, Secret{CreatedAt: now, Value: newSecret})
			return true, nil
		})
		return err
	})
	return sub, err
}

// UpdateParams changes a subscription's endpoint, event types or retry
// policy; nil fields are left as they are.
type UpdateParams struct {
	EventTypes  []string
	RetryPolicy *RetryPolicy
	URL         *string
}

// Update applies params to the subscription.
func (s *Store) Update(ctx context.Context, id uuid.UUID, actor string, params UpdateParams) (*Subscription, error) {
	if params.URL != nil {
		if err := validateURL(*params.URL, s.AllowedPrefixes); err != nil {
			return nil, err
		}
	}
	if params.EventTypes != nil {
		if err := validateEventTypes(params.EventTypes); err != nil {
			return nil, err
		}
	}
	if params.RetryPolicy != nil {
		if err := params.RetryPolicy.Validate(); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidSubscription, err)
		}
	}
	var sub *Subscription
	err := pgx.BeginFunc(ctx, s.Pool, func(tx pgx.Tx) error {
		var err error
		sub, err = update(ctx, tx, s.Secrets, id, actor, "webhook.subscription.updated", func(sub *Subscription) (bool, error) {
			if params.URL != nil {
				sub.URL = *params.URL
			}
			if params.EventTypes != nil {
				sub.EventTypes = slices.Clone(params.EventTypes)
			}
			if params.RetryPolicy != nil {
				sub.RetryPolicy = *params.RetryPolicy
			}
			return true, nil
		})
		return err
	})
	return sub, err
}
