// Package pgcluster starts a private PostgreSQL cluster from the server
// binaries installed on the machine. It exists for development (`make run`)
// and tests, so a fresh machine needs no running database.
//
// PostgreSQL refuses to run as root. When the current process is root, the
// cluster runs as an unprivileged user ("postgres" when that account exists,
// otherwise "nobody"), and the data directory is owned by that user.
package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Config configures a cluster. The zero value starts a throwaway cluster in a
// new temporary directory on a free loopback port.
type Config struct {
	// BinDir is the folder holding initdb, postgres and pg_ctl. Empty means
	// $PG_BINDIR, then the folder of initdb on $PATH, then the newest
	// /usr/lib/postgresql/*/bin.
	BinDir string

	// DataDir is the cluster's data directory. An existing initialized
	// directory is reused. Empty means a new temporary directory that Stop
	// removes.
	DataDir string

	// Durable keeps fsync on. Tests leave it off: a crash of the machine
	// would lose their data, but a crash of PostgreSQL does not.
	Durable bool

	// Logger receives start and stop lines. Nil discards them.
	Logger *slog.Logger

	// Port is the TCP port on 127.0.0.1. Zero picks a free port.
	Port int

	// Settings are extra postgresql.conf lines, name to value.
	Settings map[string]string
}

// Cluster is a running PostgreSQL server started by Start.
type Cluster struct {
	binDir    string
	cmd       *exec.Cmd
	dataDir   string
	exited    chan struct{}
	logger    *slog.Logger
	port      int
	removeDir string
	runAs     *syscall.Credential
	settings  map[string]string
}

// Start initializes the data directory when needed and starts the server. It
// returns once the server accepts connections.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}

	binDir, err := findBinDir(cfg.BinDir)
	if err != nil {
		return nil, err
	}

	runAs, err := unprivilegedCredential()
	if err != nil {
		return nil, err
	}

	c := &Cluster{binDir: binDir, logger: logger, runAs: runAs, exited: make(chan struct{})}

	c.dataDir = cfg.DataDir
	if c.dataDir == "" {
		parent, err := os.MkdirTemp("", "eventruntime-pg-")
		if err != nil {
			return nil, fmt.Errorf("create temporary folder for postgres: %w", err)
		}
		c.removeDir = parent
		if err := os.Chmod(parent, 0o711); err != nil {
			return nil, fmt.Errorf("open temporary folder %s to the postgres user: %w", parent, err)
		}
		c.dataDir = filepath.Join(parent, "data")
	}
	if c.dataDir, err = filepath.Abs(c.dataDir); err != nil {
		return nil, err
	}
	if err := c.prepareDataDir(); err != nil {
		c.cleanup()
		return nil, err
	}

	c.port = cfg.Port
	if c.port == 0 {
		if c.port, err = freePort(); err != nil {
			c.cleanup()
			return nil, err
		}
	}

	c.settings = serverSettings(cfg)
	if err := c.start(ctx); err != nil {
		c.cleanup()
		return nil, err
	}
	logger.Info("postgres started", "event", "pgcluster.started", "data_dir", c.dataDir, "port", c.port)
	return c, nil
}

// URL returns a connection string for the given database as the superuser.
func (c *Cluster) URL(database string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.port, database)
}

// Port returns the server's TCP port.
func (c *Cluster) Port() int { return c.port }

// DataDir returns the data directory.
func (c *Cluster) DataDir() string { return c.dataDir }

// Exited is closed when the server process exits.
func (c *Cluster) Exited() <-chan struct{} { return c.exited }

// Stop shuts the server down (fast mode: sessions are disconnected, open
// transactions roll back) and removes a temporary data directory.
func (c *Cluster) Stop() error {
	err := c.signalAndWait(syscall.SIGINT, 30*time.Second)
	c.cleanup()
	c.logger.Info("postgres stopped", "event", "pgcluster.stopped", "port", c.port)
	return err
}

// Kill stops the server the way a crash would (immediate mode, no shutdown
// checkpoint) and keeps the data directory, so Restart recovers from WAL.
func (c *Cluster) Kill() error {
	return c.signalAndWait(syscall.SIGQUIT, 30*time.Second)
}

// Restart starts the server again on the same port and data directory after
// Kill or an exit.
func (c *Cluster) Restart(ctx context.Context) error {
	select {
	case <-c.exited:
	default:
		if err := c.signalAndWait(syscall.SIGINT, 30*time.Second); err != nil {
			return err
		}
	}
	c.exited = make(chan struct{})
	return c.start(ctx)
}

func (c *Cluster) signalAndWait(sig syscall.Signal, timeout time.Duration) error {
	if c.cmd == nil || c.cmd.Process == nil {
		return nil
	}
	select {
	case <-c.exited:
		return nil
	default:
	}
	_ = c.cmd.Process.Signal(sig)
	select {
	case <-c.exited:
		return nil
	case <-time.After(timeout):
		_ = c.cmd.Process.Kill()
		<-c.exited
		return fmt.Errorf("postgres on port %d did not stop within %s after %s; killed", c.port, timeout, sig)
	}
}

func (c *Cluster) cleanup() {
	if c.removeDir != "" {
		_ = os.RemoveAll(c.removeDir)
	}
}

func (c *Cluster) prepareDataDir() error {
	// Parents created here must let the unprivileged user through.
	if err := os.MkdirAll(filepath.Dir(c.dataDir), 0o711); err != nil {
		return fmt.Errorf("create parent of postgres data directory %s: %w", c.dataDir, err)
	}
	if err := os.MkdirAll(c.dataDir, 0o700); err != nil {
		return fmt.Errorf("create postgres data directory %s: %w", c.dataDir, err)
	}
	if c.runAs != nil {
		if err := checkTraversable(filepath.Dir(c.dataDir), c.runAs); err != nil {
			return err
		}
		if err := os.Chown(c.dataDir, int(c.runAs.Uid), int(c.runAs.Gid)); err != nil {
			return fmt.Errorf("give postgres data directory %s to uid %d: %w", c.dataDir, c.runAs.Uid, err)
		}
	}
	if _, err := os.Stat(filepath.Join(c.dataDir, "PG_VERSION")); err == nil {
		return nil
	}

	out, err := c.command(context.Background(), "initdb",
		"-D", c.dataDir, "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync",
	).CombinedOutput()
	if err != nil {
		return fmt.Errorf("initdb %s failed: %w\n%s", c.dataDir, err, out)
	}
	return nil
}

func (c *Cluster) start(ctx context.Context) error {
	settings := c.settings
	args := []string{"-D", c.dataDir, "-p", strconv.Itoa(c.port)}
	names := make([]string, 0, len(settings))
	for name := range settings {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		args = append(args, "-c", name+"="+settings[name])
	}

	logFile, err := os.OpenFile(filepath.Join(c.dataDir, "server.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open postgres log: %w", err)
	}
	cmd := c.command(context.Background(), "postgres", args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// Take the server down with this process if it dies without Stop.
	cmd.SysProcAttr.Pdeathsig = syscall.SIGQUIT
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("start postgres: %w", err)
	}
	c.cmd = cmd
	exited := c.exited
	go func() {
		_ = cmd.Wait()
		logFile.Close()
		close(exited)
	}()

	deadline := time.Now().Add(60 * time.Second)
	for {
		conn, err := pgx.Connect(ctx, c.URL("postgres"))
		if err == nil {
			conn.Close(ctx)
			return nil
		}
		select {
		case <-exited:
			tail, _ := os.ReadFile(filepath.Join(c.dataDir, "server.log"))
			return fmt.Errorf("postgres exited during start; log:\n%s", lastLines(string(tail), 20))
		case <-ctx.Done():
			_ = c.signalAndWait(syscall.SIGQUIT, 10*time.Second)
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = c.signalAndWait(syscall.SIGQUIT, 10*time.Second)
			return fmt.Errorf("postgres on port %d not ready after 60s: %w", c.port, err)
		}
	}
}

func serverSettings(cfg Config) map[string]string {
	settings := map[string]string{
		"listen_addresses":        "127.0.0.1",
		"unix_socket_directories": "",
		"wal_level":               "logical",
		"max_replication_slots":   "10",
		"max_wal_senders":         "10",
		"max_connections":         "200",
		"timezone":                "UTC",
	}
	if !cfg.Durable {
		settings["fsync"] = "off"
		settings["full_page_writes"] = "off"
	}
	for name, value := range cfg.Settings {
		settings[name] = value
	}
	return settings
}

func (c *Cluster) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(c.binDir, name), args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if c.runAs != nil {
		cmd.SysProcAttr.Credential = c.runAs
		cmd.Env = append(os.Environ(), "HOME="+c.dataDir)
	}
	return cmd
}

func findBinDir(configured string) (string, error) {
	if configured == "" {
		configured = os.Getenv("PG_BINDIR")
	}
	if configured != "" {
		if _, err := os.Stat(filepath.Join(configured, "postgres")); err != nil {
			return "", fmt.Errorf("postgres not found in %s: %w", configured, err)
		}
		return configured, nil
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	sort.Slice(matches, func(i, j int) bool { return versionOf(matches[i]) > versionOf(matches[j]) })
	if len(matches) > 0 {
		return filepath.Dir(matches[0]), nil
	}
	if path, err := exec.LookPath("initdb"); err == nil {
		resolved, err := filepath.EvalSymlinks(path)
		if err == nil {
			return filepath.Dir(resolved), nil
		}
	}
	return "", errors.New("PostgreSQL server binaries not found: install them or set PG_BINDIR to the folder holding initdb and postgres")
}

func versionOf(path string) int {
	version, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(path))))
	return version
}

// unprivilegedCredential returns the user to run PostgreSQL as, or nil when
// the current user is not root.
func unprivilegedCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
	}
	return nil, errors.New("running as root, and neither a postgres nor a nobody user exists to run PostgreSQL as")
}

// checkTraversable reports an error when the unprivileged user cannot reach
// dir, because PostgreSQL would then fail with a less helpful message.
func checkTraversable(dir string, runAs *syscall.Credential) error {
	for current := dir; ; current = filepath.Dir(current) {
		info, err := os.Stat(current)
		if err != nil {
			return err
		}
		stat := info.Sys().(*syscall.Stat_t)
		mode := info.Mode().Perm()
		ok := mode&0o001 != 0 ||
			(stat.Uid == runAs.Uid && mode&0o100 != 0) ||
			(stat.Gid == runAs.Gid && mode&0o010 != 0)
		if !ok {
			return fmt.Errorf("%w: uid %d cannot enter %s", ErrNotTraversable, runAs.Uid, current)
		}
		if current == filepath.Dir(current) {
			return nil
		}
	}
}

// ErrNotTraversable is returned by Start when the data directory's parent
// folders do not let the unprivileged PostgreSQL user through.
var ErrNotTraversable = errors.New("postgres data directory is not reachable by the unprivileged user")

func freePort() (int, error) {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer listener.Close()
	return listener.Addr().(*net.TCPAddr).Port, nil
}

func lastLines(text string, n int) string {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
