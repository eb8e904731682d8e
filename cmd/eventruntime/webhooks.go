package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/finnest/eventruntime/webhook"
	"github.com/finnest/eventruntime/worker"
)

const webhooksUsage = `usage: eventruntime webhooks <command> [flags]

commands:
  subscribe      --tenant T --ecosystem ofb|opin --url U --events a,b [--secret whsec_...]
                 [--retry-delays 5s,5m,30m] ; prints the id and the signing secret
  disable        --subscription ID --reason TEXT
  enable         --subscription ID
  rotate-secret  --subscription ID [--secret whsec_...] [--overlap 24h]
  list           [--tenant T]
  replay         --delivery ID | --subscription ID [--since T] [--until T] [--dead-lettered]
                 | --dead-lettered [--tenant T] ; prints how many deliveries it queued

Every command but list takes --actor NAME for the audit ledger (default $USER).
Times are RFC 3339, such as 2025-03-14T09:00:00Z. DATABASE_URL and
WEBHOOK_SECRET_KEY are read from the environment.
`

// webhookExtension builds the webhook extension from the environment. When
// WEBHOOK_SECRET_KEY is unset and no subscription is enabled, it returns nil
// and the service runs without webhooks. When it is unset but subscriptions
// are enabled, it returns an error, because they would silently get nothing.
func webhookExtension(databaseURL string, logger *slog.Logger) (*worker.Extension, error) {
	encodedKey := os.Getenv("WEBHOOK_SECRET_KEY")
	if encodedKey == "" {
		enabled, err := countEnabledSubscriptions(databaseURL)
		if err != nil {
			return nil, err
		}
		if enabled > 0 {
			return nil, fmt.Errorf("WEBHOOK_SECRET_KEY is not set but %d webhook subscriptions are enabled; "+
				"set it to the base64 32-byte key their secrets were encrypted with", enabled)
		}
		logger.Warn("WEBHOOK_SECRET_KEY is not set; customer webhooks are off", "event", "webhook.extension_skipped")
		return nil, nil
	}

	cfg, err := webhookConfig(logger)
	if err != nil {
		return nil, err
	}
	if cfg.Secrets, err = webhook.ParseSecretKey(encodedKey); err != nil {
		return nil, fmt.Errorf("WEBHOOK_SECRET_KEY: %w", err)
	}
	// The pool lives as long as the process; pgxpool connects lazily.
	if cfg.Pool, err = pgxpool.New(context.Background(), databaseURL); err != nil {
		return nil, fmt.Errorf("connect to postgres for webhooks: %w", err)
	}
	extension, err := webhook.Extension(cfg)
	if err != nil {
		return nil, err
	}
	return &extension, nil
}

// webhookConfig reads the optional webhook settings.
func webhookConfig(logger *slog.Logger) (webhook.Config, error) {
	cfg := webhook.Config{Logger: logger}
	var err error
	if cfg.AllowedPrefixes, err = webhook.ParseAllowedPrefixes(os.Getenv("WEBHOOK_ALLOWED_CIDRS")); err != nil {
		return cfg, fmt.Errorf("WEBHOOK_ALLOWED_CIDRS: %w", err)
	}
	if cfg.RequestTimeout, err = durationEnv("WEBHOOK_TIMEOUT", webhook.DefaultRequestTimeout); err != nil {
		return cfg, err
	}
	if cfg.MaxRetryAfter, err = durationEnv("WEBHOOK_MAX_RETRY_AFTER", webhook.DefaultMaxRetryAfter); err != nil {
		return cfg, err
	}
	if cfg.EndpointConcurrency, err = intEnv("WEBHOOK_ENDPOINT_CONCURRENCY", webhook.DefaultEndpointConcurrency); err != nil {
		return cfg, err
	}
	if cfg.MaxBodyBytes, err = intEnv("WEBHOOK_MAX_BODY_BYTES", webhook.DefaultMaxBodyBytes); err != nil {
		return cfg, err
	}
	if cfg.MaxWorkers, err = intEnv("WEBHOOK_WORKERS", webhook.DefaultMaxWorkers); err != nil {
		return cfg, err
	}
	return cfg, nil
}

func countEnabledSubscriptions(databaseURL string) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		return 0, fmt.Errorf("connect to postgres to check webhook subscriptions: %w", err)
	}
	defer conn.Close(ctx)
	var enabled int
	err = conn.QueryRow(ctx, "SELECT count(*) FROM webhook_subscriptions WHERE state = 'enabled'").Scan(&enabled)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P01" { // undefined_table: not migrated yet
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("count enabled webhook subscriptions: %w", err)
	}
	return enabled, nil
}

// runWebhooks runs `eventruntime webhooks <command>`.
func runWebhooks(ctx context.Context, logger *slog.Logger, args []string) error {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fmt.Print(webhooksUsage)
		return nil
	}
	databaseURL := os.Getenv("DATABASE_URL")
	if databaseURL == "" {
		return errors.New("DATABASE_URL is not set")
	}
	box, err := webhook.ParseSecretKey(os.Getenv("WEBHOOK_SECRET_KEY"))
	if err != nil {
		return fmt.Errorf("WEBHOOK_SECRET_KEY: %w", err)
	}
	allowed, err := webhook.ParseAllowedPrefixes(os.Getenv("WEBHOOK_ALLOWED_CIDRS"))
	if err != nil {
		return fmt.Errorf("WEBHOOK_ALLOWED_CIDRS: %w", err)
	}
	pool, err := pgxpool.New(ctx, databaseURL)
	if err != nil {
		return fmt.Errorf("connect to postgres: %w", err)
	}
	defer pool.Close()
	cli := &webhookCLI{
		logger: logger,
		out:    os.Stdout,
		pool:   pool,
		store:  &webhook.Store{AllowedPrefixes: allowed, Pool: pool, Secrets: box},
	}

	command, rest := args[0], args[1:]
	switch command {
	case "subscribe":
		return cli.subscribe(ctx, rest)
	case "disable":
		return cli.disable(ctx, rest)
	case "enable":
		return cli.enable(ctx, rest)
	case "rotate-secret":
		return cli.rotateSecret(ctx, rest)
	case "list":
		return cli.list(ctx, rest)
	case "replay":
		return cli.replay(ctx, rest)
	default:
		return fmt.Errorf("unknown webhooks command %q\n\n%s", command, webhooksUsage)
	}
}

type webhookCLI struct {
	logger *slog.Logger
	out    io.Writer
	pool   *pgxpool.Pool
	store  *webhook.Store
}

func newFlagSet(name string) (*flag.FlagSet, *string) {
	flags := flag.NewFlagSet("webhooks "+name, flag.ContinueOnError)
	actor := flags.String("actor", os.Getenv("USER"), "who makes the change, for the audit ledger")
	return flags, actor
}

func requireActor(actor string) error {
	if strings.TrimSpace(actor) == "" {
		return errors.New("--actor is required when $USER is not set")
	}
	return nil
}

func parseSubscriptionID(text string) (uuid.UUID, error) {
	if text == "" {
		return uuid.Nil, errors.New("--subscription is required")
	}
	id, err := uuid.Parse(text)
	if err != nil {
		return uuid.Nil, fmt.Errorf("--subscription %q is not a UUID", text)
	}
	return id, nil
}

func (c *webhookCLI) subscribe(ctx context.Context, args []string) error {
	flags, actor := newFlagSet("subscribe")
	tenant := flags.String("tenant", "", "tenant id (required)")
	ecosystem := flags.String("ecosystem", "", "ofb or opin (required)")
	endpoint := flags.String("url", "", "endpoint URL, http or https (required)")
	events := flags.String("events", "", "comma-separated event types; claim.* and * match several (required)")
	secret := flags.String("secret", "", "signing secret as whsec_<base64>; empty generates one")
	retryDelays := flags.String("retry-delays", "", "comma-separated gaps between attempts, such as 5s,5m,1h; empty means the default schedule")
	if err := flags.Parse(args); err != nil {
		return err
	}
	if err := requireActor(*actor); err != nil {
		return err
	}

	delays, err := webhook.ParseRetryDelays(*retryDelays)
	if err != nil {
		return err
	}
	var eventTypes []string
	for _, eventType := range strings.Split(*events, ",") {
		if eventType = strings.TrimSpace(eventType); eventType != "" {
			eventTypes = append(eventTypes, eventType)
		}
	}

	sub, err := c.store.Create(ctx, webhook.CreateParams{
		Actor: *actor, Ecosystem: *ecosystem, EventTypes: eventTypes, RetryPolicy: webhook.RetryPolicy{Delays: delays},
		Secret: *secret, TenantID: *tenant, URL: *endpoint,
	})
	if err != nil {
		return err
	}
	c.logger.Info("webhook subscription created", "event", "webhook.subscription_created",
		"subscription_id", sub.ID, "tenant_id", sub.TenantID, "actor", *actor)
	fmt.Fprintf(c.out, "subscription %s created\n", sub.ID)
	if *secret == "" {
		fmt.Fprintf(c.out, "signing secret (shown once): %s\n", sub.Secrets[0].Value)
	}
	return nil
}

func (c *webhookCLI) disable(ctx context.Context, args []string) error {
	flags, actor := newFlagSet("disable")
	subscription := flags.String("subscription", "", "subscription id (required)")
	reason := flags.String("reason", "", "why the subscription is disabled (required)")
	if err := flags.Parse(args); err != nil {
		return err
	}
	if err := requireActor(*actor); err != nil {
		return err
	}
	id, err := parseSubscriptionID(*subscription)
	if err != nil {
		return err
	}
	sub, err := c.store.Disable(ctx, id, *actor, *reason)
	if err != nil {
		return err
	}
	c.logger.Info("webhook subscription disabled", "event", "webhook.subscription_disabled",
		"subscription_id", sub.ID, "actor", *actor)
	fmt.Fprintf(c.out, "subscription %s is %s\n", sub.ID, sub.State)
	return nil
}

func (c *webhookCLI) enable(ctx context.Context, args []string) error {
	flags, actor := newFlagSet("enable")
	subscription := flags.String("subscription", "", "subscription id (required)")
	if err := flags.Parse(args); err != nil {
		return err
	}
	if err := requireActor(*actor); err != nil {
		return err
	}
	id, err := parseSubscriptionID(*subscription)
	if err != nil {
		return err
	}
	sub, err := c.store.Enable(ctx, id, *actor)
	if err != nil {
		return err
	}
	c.logger.Info("webhook subscription enabled", "event", "webhook.subscription_enabled",
		"subscription_id", sub.ID, "actor", *actor)
	fmt.Fprintf(c.out, "subscription %s is %s\n", sub.ID, sub.State)
	return nil
}

func (c *webhookCLI) rotateSecret(ctx context.Context, args []string) error {
	flags, actor := newFlagSet("rotate-secret")
	subscription := flags.String("subscription", "", "subscription id (required)")
	secret := flags.String("secret", "", "new signing secret as whsec_<base64>; empty generates one")
	overlap := flags.Duration("overlap", 24*time.Hour, "how long the current secrets keep signing beside the new one")
	if err := flags.Parse(args); err != nil {
		return err
	}
	if err := requireActor(*actor); err != nil {
		return err
	}
	id, err := parseSubscriptionID(*subscription)
	if err != nil {
		return err
	}
	sub, err := c.store.RotateSecret(ctx, id, *actor, *secret, *overlap)
	if err != nil {
		return err
	}
	newest := sub.Secrets[len(sub.Secrets)-1]
	c.logger.Info("webhook secret rotated", "event", "webhook.secret_rotated",
		"subscription_id", sub.ID, "fingerprint", newest.Fingerprint(), "actor", *actor)
	fmt.Fprintf(c.out, "subscription %s has a new secret (fingerprint %s); the old ones sign until %s\n",
		sub.ID, newest.Fingerprint(), time.Now().Add(*overlap).UTC().Format(time.RFC3339))
	if *secret == "" {
		fmt.Fprintf(c.out, "signing secret (shown once): %s\n", newest.Value)
	}
	return nil
}

func (c *webhookCLI) list(ctx context.Context, args []string) error {
	flags := flag.NewFlagSet("webhooks list", flag.ContinueOnError)
	tenant := flags.String("tenant", "", "only this tenant's subscriptions")
	if err := flags.Parse(args); err != nil {
		return err
	}
	subs, err := c.store.List(ctx, *tenant)
	if err != nil {
		return err
	}
	table := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(table, "ID\tTENANT\tECOSYSTEM\tSTATE\tATTEMPTS\tEVENTS\tHOST\tSECRETS\tREASON")
	for _, sub := range subs {
		var fingerprints []string
		for _, secret := range sub.Secrets {
			if secret.ActiveAt(time.Now()) {
				fingerprints = append(fingerprints, secret.Fingerprint())
			}
		}
		fmt.Fprintf(table, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", sub.ID, sub.TenantID, sub.Ecosystem, sub.State,
			sub.RetryPolicy.MaxAttempts(), strings.Join(sub.EventTypes, ","), hostOf(sub.URL),
			strings.Join(fingerprints, ","), sub.DisabledReason)
	}
	return table.Flush()
}

// hostOf returns the scheme and host of an endpoint, leaving out the path and
// query, which can hold a customer's token.
func hostOf(raw string) string {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return "(invalid URL)"
	}
	host, _, _ := strings.Cut(rest, "/")
	host, _, _ = strings.Cut(host, "?")
	return scheme + "://" + host
}

func (c *webhookCLI) replay(ctx context.Context, args []string) error {
	flags, actor := newFlagSet("replay")
	delivery := flags.Int64("delivery", 0, "replay this delivery id")
	subscription := flags.String("subscription", "", "replay this subscription's deliveries")
	since := flags.String("since", "", "only deliveries created at or after this RFC 3339 time")
	until := flags.String("until", "", "only deliveries created before this RFC 3339 time")
	deadLettered := flags.Bool("dead-lettered", false, "only dead-lettered deliveries; alone, all of them")
	tenant := flags.String("tenant", "", "only this tenant's deliveries")
	if err := flags.Parse(args); err != nil {
		return err
	}
	if err := requireActor(*actor); err != nil {
		return err
	}
	filter := webhook.ReplayFilter{DeadLettered: *deadLettered, DeliveryID: *delivery, TenantID: *tenant}
	var err error
	if *subscription != "" {
		if filter.SubscriptionID, err = parseSubscriptionID(*subscription); err != nil {
			return err
		}
	}
	for _, bound := range []struct {
		flag  string
		text  string
		value *time.Time
	}{{"--since", *since, &filter.Since}, {"--until", *until, &filter.Until}} {
		if bound.text == "" {
			continue
		}
		if *bound.value, err = time.Parse(time.RFC3339, bound.text); err != nil {
			return fmt.Errorf("%s %q is not an RFC 3339 time such as 2025-03-14T09:00:00Z", bound.flag, bound.text)
		}
	}

	// An insert-only River client: it runs no workers.
	client, err := river.NewClient(riverpgxv5.New(c.pool), &river.Config{Logger: c.logger})
	if err != nil {
		return fmt.Errorf("create River client: %w", err)
	}
	result, err := webhook.Replay(ctx, c.pool, client, filter, *actor)
	if err != nil {
		return err
	}
	c.logger.Info("webhook deliveries replayed", "event", "webhook.replayed", "matched", result.Matched,
		"queued", result.Queued, "skipped", result.Skipped, "actor", *actor)
	fmt.Fprintf(c.out, "queued %d deliveries (%d matched, %d skipped: still pending or subscription disabled)\n",
		result.Queued, result.Matched, result.Skipped)
	return nil
}
