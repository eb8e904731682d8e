package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/finnest/eventruntime/internal/demo"
	"github.com/finnest/eventruntime/internal/natsembed"
	"github.com/finnest/eventruntime/internal/pgcluster"
	"github.com/finnest/eventruntime/migrations"
	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/regulator/ofbfake"
	"github.com/finnest/eventruntime/sequin"
	"github.com/finnest/eventruntime/tenant"
	"github.com/finnest/eventruntime/worker"
)

// benchTenants are the tenants the producers write for. Their organisation
// ids are in the transport certificates the fake regulator issues.
var benchTenants = []demo.Tenant{
	{ID: "tenant-a", OrganisationID: "0b5a8d4e-6c3f-4f7e-9a51-2d1c7e3b8a10",
		SoftwareStatementID: "5f0c2b7e-1d4a-4c8b-9e2f-7a6d3c1b0e91"},
	{ID: "tenant-b", OrganisationID: "7d2e9c41-3b8f-4a06-b5d7-e1f0a2c39b84",
		SoftwareStatementID: "c3a1e7d9-8b2f-4f60-a4c5-1e9d7b3f2a06"},
}

const (
	databaseName = "eventruntime"
	streamName   = "OUTBOX"
)

// environment is everything the benchmark runs besides the service.
type environment struct {
	binary      string
	caFile      string
	cluster     *pgcluster.Cluster
	databaseURL string
	fake        *ofbfake.Server
	js          jetstream.JetStream
	natsConn    *nats.Conn
	natsServer  *natsembed.Server
	opts        options
	pool        *pgxpool.Pool
	stream      jetstream.Stream
	workDir     string

	standInCancel context.CancelFunc
	standInDone   chan struct{}
}

func startEnvironment(ctx context.Context, opts options) (_ *environment, err error) {
	env := &environment{opts: opts}
	defer func() {
		if err != nil {
			env.close()
		}
	}()
	if env.workDir, err = os.MkdirTemp("", "eventruntime-bench-pipeline-"); err != nil {
		return nil, err
	}

	env.binary = opts.binary
	if env.binary == "" {
		env.binary = filepath.Join(env.workDir, "eventruntime")
		build := exec.Command("go", "build", "-o", env.binary, "./cmd/eventruntime")
		if output, err := build.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go build ./cmd/eventruntime: %w\n%s", err, output)
		}
	}

	// pg_stat_statements names the statements that take PostgreSQL's time
	// in each phase. It costs a little CPU on every statement.
	env.cluster, err = pgcluster.Start(ctx, pgcluster.Config{Durable: true, Settings: map[string]string{
		"shared_preload_libraries": "pg_stat_statements",
	}})
	if err != nil {
		return nil, fmt.Errorf("start PostgreSQL: %w", err)
	}
	if err := createDatabase(ctx, env.cluster.URL("postgres")); err != nil {
		return nil, err
	}
	env.databaseURL = env.cluster.URL(databaseName)
	poolConfig, err := pgxpool.ParseConfig(env.databaseURL)
	if err != nil {
		return nil, err
	}
	poolConfig.MaxConns = int32(max(opts.baselineConns, producerWorkers) + 4)
	if env.pool, err = pgxpool.NewWithConfig(ctx, poolConfig); err != nil {
		return nil, fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	if err := migrations.Up(ctx, env.pool, slog.New(slog.DiscardHandler)); err != nil {
		return nil, err
	}
	if _, err := env.pool.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"); err != nil {
		return nil, fmt.Errorf("create extension pg_stat_statements: %w", err)
	}

	if env.natsServer, err = natsembed.Start(natsembed.Config{}); err != nil {
		return nil, err
	}
	if env.natsConn, err = nats.Connect(env.natsServer.ClientURL(), nats.Name("bench-sequin-standin")); err != nil {
		return nil, fmt.Errorf("connect to NATS: %w", err)
	}
	if env.js, err = jetstream.New(env.natsConn); err != nil {
		return nil, err
	}
	// The stream must exist before the stand-in publishes, because core NATS
	// publishes that no stream captures are lost. The service's defaults
	// describe the same stream.
	env.stream, err = worker.EnsureStream(ctx, env.js, worker.StreamConfig{
		Name: streamName, Subjects: []string{"sequin.*.public.outbox.*"},
	})
	if err != nil {
		return nil, err
	}

	env.fake, err = ofbfake.New(ofbfake.Config{
		SkipRequestValidation:  !opts.validateRequests,
		SkipResponseValidation: true,
	})
	if err != nil {
		return nil, err
	}
	if err := env.fake.Start(); err != nil {
		return nil, err
	}
	env.caFile = filepath.Join(env.workDir, "regulator-ca.pem")
	if err := os.WriteFile(env.caFile, env.fake.CACertPEM(), 0o600); err != nil {
		return nil, err
	}
	if err := env.configureTenants(ctx); err != nil {
		return nil, err
	}
	return env, nil
}

func createDatabase(ctx context.Context, adminURL string) error {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+databaseName); err != nil {
		return fmt.Errorf("create database %s: %w", databaseName, err)
	}
	return nil
}

// configureTenants issues each tenant a transport certificate from the fake
// and writes its near-real-time configuration.
func (env *environment) configureTenants(ctx context.Context) error {
	for _, t := range benchTenants {
		_, certPEM, keyPEM, err := env.fake.IssueClientCertificate(t.OrganisationID)
		if err != nil {
			return err
		}
		certFile := filepath.Join(env.workDir, t.ID+".crt")
		keyFile := filepath.Join(env.workDir, t.ID+".key")
		if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
			return err
		}
		if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
			return err
		}
		err = tenant.Upsert(ctx, env.pool, &tenant.Config{
			TenantID:       t.ID,
			Ecosystem:      outbox.EcosystemOFB,
			Enabled:        true,
			Environment:    "bench",
			OrganisationID: t.OrganisationID,
			ClientID:       t.SoftwareStatementID,
			Credentials:    map[string]string{"certificate": "file:" + certFile, "private_key": "file:" + keyFile},
			FlushInterval:  env.opts.flushInterval,
			SubmissionMode: tenant.ModeNearRealTime,
		})
		if err != nil {
			return fmt.Errorf("configure tenant %s: %w", t.ID, err)
		}
	}
	return nil
}

// startStandIn starts the Sequin stand-in and waits until its slot streams.
func (env *environment) startStandIn(ctx context.Context) error {
	standIn, err := sequin.NewStandIn(sequin.StandInConfig{
		DatabaseURL: env.databaseURL,
		Logger:      slog.New(slog.DiscardHandler),
		NATS:        env.natsConn,
	})
	if err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(ctx)
	env.standInCancel = cancel
	env.standInDone = make(chan struct{})
	go func() {
		defer close(env.standInDone)
		_ = standIn.Run(runCtx)
	}()
	select {
	case <-standIn.Ready():
		return nil
	case <-time.After(30 * time.Second):
		return errors.New("the Sequin stand-in was not streaming after 30s")
	}
}

func (env *environment) close() {
	if env.standInCancel != nil {
		env.standInCancel()
		<-env.standInDone
	}
	if env.fake != nil {
		_ = env.fake.Close()
	}
	if env.natsConn != nil {
		env.natsConn.Close()
	}
	if env.natsServer != nil {
		env.natsServer.Shutdown()
	}
	if env.pool != nil {
		env.pool.Close()
	}
	if env.cluster != nil {
		_ = env.cluster.Stop()
	}
	if env.workDir != "" {
		_ = os.RemoveAll(env.workDir)
	}
}

// streamLastSequence returns the sequence of the last message in the stream.
func (env *environment) streamLastSequence(ctx context.Context) (uint64, error) {
	info, err := env.stream.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("read stream %s: %w", streamName, err)
	}
	return info.State.LastSeq, nil
}

func (env *environment) printMachine() {
	var version, fsync, synchronousCommit string
	ctx := context.Background()
	_ = env.pool.QueryRow(ctx, "SHOW server_version").Scan(&version)
	_ = env.pool.QueryRow(ctx, "SHOW fsync").Scan(&fsync)
	_ = env.pool.QueryRow(ctx, "SHOW synchronous_commit").Scan(&synchronousCommit)
	fmt.Printf("machine: %d CPUs (%s), %s, %s/%s, Go %s, load average %s\n", runtime.NumCPU(), cpuModel(),
		memoryTotal(), runtime.GOOS, runtime.GOARCH, runtime.Version(), loadAverage())
	fmt.Printf("postgres: %s, fsync=%s, synchronous_commit=%s\n", version, fsync, synchronousCommit)
	fmt.Printf("fake regulator: request validation %v; service: FLUSH_EVERY=%s, tenant flush interval %s, "+
		"CONSUMER_BATCH_SIZE=%s\n", env.opts.validateRequests, env.opts.flushEvery,
		env.opts.flushInterval, consumerBatchSize(env.opts))
}

func consumerBatchSize(opts options) string {
	if opts.consumerBatchSize == 0 {
		return "default"
	}
	return strconv.Itoa(opts.consumerBatchSize)
}

// service is a running `eventruntime serve` subprocess.
type service struct {
	cmd       *exec.Cmd
	exited    chan struct{}
	httpAddr  string
	logPath   string
	pprofAddr string
}

// startService runs `eventruntime serve` against the environment and waits
// until its /livez returns 200.
func (env *environment) startService(ctx context.Context, name string) (*service, error) {
	httpAddr, err := freeLoopbackAddr()
	if err != nil {
		return nil, err
	}
	pprofAddr, err := freeLoopbackAddr()
	if err != nil {
		return nil, err
	}
	s := &service{
		exited:    make(chan struct{}),
		httpAddr:  httpAddr,
		logPath:   filepath.Join(env.workDir, "service-"+name+".log"),
		pprofAddr: pprofAddr,
	}
	logFile, err := os.Create(s.logPath)
	if err != nil {
		return nil, err
	}
	s.cmd = exec.Command(env.binary, "serve")
	// A minimal environment, so no variable of the calling shell points the
	// service at another server.
	s.cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + env.workDir,
		"DATABASE_URL=" + env.databaseURL,
		"NATS_URL=" + env.natsServer.ClientURL(),
		"HTTP_ADDR=" + httpAddr,
		"PPROF_ADDR=" + pprofAddr,
		"OFB_REPORT_URL=" + env.fake.URL(),
		"OFB_TOKEN_URL=" + env.fake.URL(),
		"REGULATOR_CA_FILE=" + env.caFile,
		"FLUSH_EVERY=" + env.opts.flushEvery.String(),
		"SHUTDOWN_TIMEOUT=20s",
		"LOG_LEVEL=warn",
	}
	if env.opts.consumerBatchSize > 0 {
		s.cmd.Env = append(s.cmd.Env, "CONSUMER_BATCH_SIZE="+strconv.Itoa(env.opts.consumerBatchSize))
	}
	s.cmd.Stdout = logFile
	s.cmd.Stderr = logFile
	if err := s.cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s serve: %w", env.binary, err)
	}
	go func() {
		_ = s.cmd.Wait()
		logFile.Close()
		close(s.exited)
	}()

	deadline := time.Now().Add(60 * time.Second)
	for {
		response, err := http.Get("http://" + httpAddr + "/livez")
		if err == nil {
			response.Body.Close()
			if response.StatusCode == http.StatusOK {
				fmt.Printf("  [%s] service started: pid %d, pprof on http://%s/debug/pprof/, log %s\n",
					name, s.cmd.Process.Pid, pprofAddr, s.logPath)
				return s, nil
			}
		}
		select {
		case <-s.exited:
			return nil, fmt.Errorf("serve exited during start; log:\n%s", tail(s.logPath, 40))
		case <-ctx.Done():
			s.stop()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.stop()
			return nil, fmt.Errorf("serve not live after 60s; log:\n%s", tail(s.logPath, 40))
		}
	}
}

// stop sends SIGTERM and waits for the process to exit, killing it after
// 45 s.
func (s *service) stop() {
	select {
	case <-s.exited:
		return
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(45 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
}

// memory returns the service's current and peak resident set size in bytes,
// VmRSS and VmHWM of /proc/<pid>/status.
func (s *service) memory() (rss, peak int64) {
	file, err := os.Open(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		return 0, 0
	}
	defer file.Close()
	scanner := bufio.NewScanner(file)
	for scanner.Scan() {
		fields := strings.Fields(scanner.Text())
		if len(fields) < 2 {
			continue
		}
		kib, _ := strconv.ParseInt(fields[1], 10, 64)
		switch fields[0] {
		case "VmRSS:":
			rss = kib << 10
		case "VmHWM:":
			peak = kib << 10
		}
	}
	return rss, peak
}

// countLogEvents sums the attribute sumKey over the service's log lines whose
// event attribute is event, and counts the lines.
func (s *service) countLogEvents(event, sumKey string) (lines, sum int64) {
	data, err := os.ReadFile(s.logPath)
	if err != nil {
		return 0, 0
	}
	needle := `"event":"` + event + `"`
	for line := range strings.SplitSeq(string(data), "\n") {
		if !strings.Contains(line, needle) {
			continue
		}
		lines++
		if i := strings.Index(line, `"`+sumKey+`":`); i >= 0 {
			rest := line[i+len(sumKey)+3:]
			end := strings.IndexAny(rest, ",}")
			if n, err := strconv.ParseInt(rest[:max(end, 0)], 10, 64); err == nil {
				sum += n
			}
		}
	}
	return lines, sum
}

// profileCPU writes a CPU profile of the service, taken over d, to path.
func (s *service) profileCPU(path string, d time.Duration) error {
	client := &http.Client{Timeout: d + 30*time.Second}
	url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", s.pprofAddr, int(d.Seconds()))
	response, err := client.Get(url)
	if err != nil {
		return fmt.Errorf("fetch service CPU profile: %w", err)
	}
	defer response.Body.Close()
	if response.StatusCode != http.StatusOK {
		return fmt.Errorf("fetch service CPU profile: status %s", response.Status)
	}
	file, err := os.Create(path)
	if err != nil {
		return err
	}
	defer file.Close()
	_, err = io.Copy(file, response.Body)
	return err
}

func freeLoopbackAddr() (string, error) {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer listener.Close()
	return listener.Addr().String(), nil
}

// tail returns the last lines of a file, for error messages.
func tail(path string, lines int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	all := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	return strings.Join(all[max(0, len(all)-lines):], "\n")
}

// cpuTimes are CPU seconds, user and system together, of this process (the
// fake regulator, NATS, the stand-in and the producers), of the PostgreSQL
// server and of the service, so a phase can report where the cores went.
type cpuTimes struct {
	bench, postgres, service float64
}

func (env *environment) cpuTimes(s *service) cpuTimes {
	var times cpuTimes
	times.bench = processCPU(os.Getpid(), false)
	if s != nil {
		times.service = processCPU(s.cmd.Process.Pid, false)
	}
	times.postgres = env.postgresCPU()
	return times
}

func (t cpuTimes) sub(earlier cpuTimes) cpuTimes {
	return cpuTimes{bench: t.bench - earlier.bench, postgres: t.postgres - earlier.postgres,
		service: t.service - earlier.service}
}

// postgresCPU sums the CPU time of the postmaster, its live children and
// the children it has reaped.
func (env *environment) postgresCPU() float64 {
	data, err := os.ReadFile(filepath.Join(env.cluster.DataDir(), "postmaster.pid"))
	if err != nil {
		return 0
	}
	postmaster, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(data), "\n", 2)[0]))
	if err != nil {
		return 0
	}
	total := processCPU(postmaster, true)
	entries, _ := os.ReadDir("/proc")
	for _, entry := range entries {
		pid, err := strconv.Atoi(entry.Name())
		if err != nil {
			continue
		}
		if parent, ok := parentPID(pid); ok && parent == postmaster {
			total += processCPU(pid, false)
		}
	}
	return total
}

// statFields returns the fields of /proc/<pid>/stat after the command name.
func statFields(pid int) []string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	text := string(data)
	end := strings.LastIndexByte(text, ')')
	if end < 0 {
		return nil
	}
	return strings.Fields(text[end+1:])
}

func parentPID(pid int) (int, bool) {
	fields := statFields(pid)
	if len(fields) < 2 {
		return 0, false
	}
	parent, err := strconv.Atoi(fields[1])
	return parent, err == nil
}

// processCPU returns a process's user and system CPU seconds, with those of
// its reaped children when withChildren is set. It assumes 100 clock ticks
// per second, the Linux default.
func processCPU(pid int, withChildren bool) float64 {
	fields := statFields(pid)
	// After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
	if len(fields) < 15 {
		return 0
	}
	last := 12
	if withChildren {
		last = 14
	}
	var ticks int64
	for i := 11; i <= last; i++ {
		n, _ := strconv.ParseInt(fields[i], 10, 64)
		ticks += n
	}
	return float64(ticks) / 100
}

func memoryTotal() string {
	file, err := os.Open("/proc/meminfo")
	if err != nil {
		return "memory unknown"
	}
	defer file.Close()
	scanner := bufio.NewScanner(file)
	for scanner.Scan() {
		fields := strings.Fields(scanner.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kib, _ := strconv.ParseInt(fields[1], 10, 64)
			return fmt.Sprintf("%.1f GiB RAM", float64(kib)/(1<<20))
		}
	}
	return "memory unknown"
}

func cpuModel() string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "model unknown"
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if name, value, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(name) == "model name" {
			return strings.TrimSpace(value)
		}
	}
	return "model unknown"
}

func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.Join(strings.Fields(string(data))[:3], " ")
}

// printTopStatements prints the statements that took the most PostgreSQL
// time since the last call, then resets the statistics.
func (env *environment) printTopStatements(ctx context.Context, phase string, limit int) {
	rows, err := env.pool.Query(ctx, `
		SELECT calls, total_exec_time, rows, regexp_replace(query, '\s+', ' ', 'g')
		FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT $1`, limit)
	if err != nil {
		fmt.Printf("  [%s] pg_stat_statements unavailable: %v\n", phase, err)
		return
	}
	defer rows.Close()
	fmt.Printf("  [%s] PostgreSQL statements by total execution time (excluding commit fsync waits):\n", phase)
	for rows.Next() {
		var calls, count int64
		var total float64
		var query string
		if err := rows.Scan(&calls, &total, &count, &query); err != nil {
			return
		}
		fmt.Printf("    %8.0f ms %8d calls %10d rows  %.110s\n", total, calls, count, query)
	}
	rows.Close()
	_, _ = env.pool.Exec(ctx, "SELECT pg_stat_statements_reset()")
}
