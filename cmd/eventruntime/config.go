package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/finnest/eventruntime/riverui"
	"github.com/finnest/eventruntime/tenant"
)

const configUsage = `usage: eventruntime config get --tenant T --ecosystem ofb|opin
       eventruntime config set --tenant T --ecosystem ofb|opin [--actor NAME] key=value ...

get prints the tenant's settings as JSON. set changes the given keys in one
transaction and appends a config.set row to the audit ledger; the running
service applies the change on its next flush or submission, without a
restart. --actor defaults to $USER. DATABASE_URL is read from the
environment.

keys:
  enabled, dry_run, approval_required          true or false
  environment                                  such as sandbox or production
  organisation_id, client_id, signing_key_id   text
  submission_mode                              near_real_time or scheduled
  flush_interval, schedule_cadence             positive duration, such as 5s or 1h
  deadline_margin                              duration, such as 2h
  schedule_window_start, schedule_window_end   time of day, HH:MM, in regulator_zone
  regulator_zone                               IANA zone, such as America/Sao_Paulo
  capture_durability                           fail_closed or fail_open
  credentials.<name>                           file:/absolute/path or env:NAME; never a secret;
                                               empty removes the reference
  retention.<table>                            days, such as 60d; at least one day;
                                               empty removes the entry
  eligibility                                  a JSON object
`

const riverUIUsage = `usage: eventruntime riverui hash-password

Reads a password from the first line of standard input and prints its
bcrypt hash, for a RIVERUI_USERS entry name:tier:hash (tier viewer or
approver; entries separated by commas). For example:

  read -rs PASSWORD && printf '%s\n' "$PASSWORD" | eventruntime riverui hash-password
`

// runConfig prints or changes a tenant's settings.
func runConfig(ctx context.Context, logger *slog.Logger, args []string) error {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fmt.Print(configUsage)
		return nil
	}
	pool, err := connectFromEnv(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	switch args[0] {
	case "get":
		return configGet(ctx, pool, os.Stdout, args[1:])
	case "set":
		return configSet(ctx, pool, logger, os.Stdout, args[1:])
	default:
		return fmt.Errorf("unknown config command %q\n\n%s", args[0], configUsage)
	}
}

func connectFromEnv(ctx context.Context) (*pgxpool.Pool, error) {
	databaseURL := os.Getenv("DATABASE_URL")
	if databaseURL == "" {
		return nil, errors.New("DATABASE_URL is not set")
	}
	pool, err := pgxpool.New(ctx, databaseURL)
	if err != nil {
		return nil, fmt.Errorf("connect to postgres: %w", err)
	}
	return pool, nil
}

// tenantFlags adds --tenant and --ecosystem to flags.
func tenantFlags(flags *flag.FlagSet) (tenantID, ecosystem *string) {
	tenantID = flags.String("tenant", "", "tenant id")
	ecosystem = flags.String("ecosystem", "", "ecosystem: ofb or opin")
	return tenantID, ecosystem
}

// parseInterspersed parses flags that may come before, between or after the
// positional arguments, and returns the positional arguments in order.
func parseInterspersed(flags *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := flags.Parse(args); err != nil {
			return nil, err
		}
		args = flags.Args()
		if len(args) == 0 {
			return positional, nil
		}
		positional = append(positional, args[0])
		args = args[1:]
	}
}

func configGet(ctx context.Context, pool *pgxpool.Pool, out io.Writer, args []string) error {
	flags := flag.NewFlagSet("config get", flag.ContinueOnError)
	tenantID, ecosystem := tenantFlags(flags)
	if err := flags.Parse(args); err != nil {
		return err
	}
	if *tenantID == "" || *ecosystem == "" {
		return errors.New("--tenant and --ecosystem are required")
	}
	snapshot, err := tenant.ReadSettings(ctx, pool, *tenantID, *ecosystem)
	if err != nil {
		return err
	}
	encoder := json.NewEncoder(out)
	encoder.SetIndent("", "  ")
	return encoder.Encode(snapshot)
}

func configSet(ctx context.Context, pool *pgxpool.Pool, logger *slog.Logger, out io.Writer, args []string) error {
	flags := flag.NewFlagSet("config set", flag.ContinueOnError)
	tenantID, ecosystem := tenantFlags(flags)
	actor := flags.String("actor", os.Getenv("USER"), "who makes the change, for the audit ledger")
	pairs, err := parseInterspersed(flags, args)
	if err != nil {
		return err
	}
	if *tenantID == "" || *ecosystem == "" {
		return errors.New("--tenant and --ecosystem are required")
	}
	if err := requireActor(*actor); err != nil {
		return err
	}
	if len(pairs) == 0 {
		return errors.New("no key=value given; see eventruntime config help")
	}
	changes := map[string]string{}
	for i, pair := range pairs {
		key, value, ok := strings.Cut(pair, "=")
		if !ok || key == "" {
			// The argument is not shown, since it may be a misplaced secret.
			return fmt.Errorf("setting %d of %d is not key=value", i+1, len(pairs))
		}
		if _, repeated := changes[key]; repeated {
			return fmt.Errorf("key %s is given twice", key)
		}
		changes[key] = value
	}

	var change *tenant.Change
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		change, err = tenant.Set(ctx, tx, *actor, *tenantID, *ecosystem, changes)
		return err
	})
	if err != nil {
		return err
	}
	keys := slices.Sorted(maps.Keys(changes))
	logger.Info("tenant configuration changed", "event", "config.set", "tenant_id", *tenantID,
		"ecosystem", *ecosystem, "actor", *actor, "keys", keys)
	for _, key := range keys {
		fmt.Fprintf(out, "%s: %q -> %q\n", key, change.Old[key], change.New[key])
	}
	return nil
}

// runRiverUI runs the riverui commands.
func runRiverUI(args []string, in io.Reader, out io.Writer) error {
	if len(args) != 1 || args[0] != "hash-password" {
		_, _ = io.WriteString(os.Stderr, riverUIUsage)
		return errors.New("want `riverui hash-password`")
	}
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read the password from standard input: %w", err)
	}
	password := strings.TrimRight(line, "\r\n")
	if password == "" {
		return errors.New("no password on standard input")
	}
	hash, err := riverui.HashPassword([]byte(password))
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(out, string(hash))
	return err
}
