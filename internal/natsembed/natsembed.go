// Package natsembed runs an in-process NATS server with JetStream, for
// development and tests. Production uses a real NATS deployment.
package natsembed

import (
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Config configures an embedded server. The zero value listens on a free
// loopback port and stores JetStream data in a new temporary directory.
type Config struct {
	// Port is the client port on 127.0.0.1. Zero picks a free port.
	Port int

	// StoreDir is the JetStream storage directory. Empty means a temporary
	// directory that Shutdown removes.
	StoreDir string
}

// Server is a running embedded NATS server.
type Server struct {
	*server.Server
	removeDir string
}

// Start starts the server and waits until it accepts connections.
func Start(cfg Config) (*Server, error) {
	s := &Server{}
	storeDir := cfg.StoreDir
	if storeDir == "" {
		dir, err := os.MkdirTemp("", "eventruntime-nats-")
		if err != nil {
			return nil, fmt.Errorf("create NATS store folder: %w", err)
		}
		storeDir, s.removeDir = dir, dir
	}
	port := cfg.Port
	if port == 0 {
		port = server.RANDOM_PORT
	}

	opts := &server.Options{
		Host:      "127.0.0.1",
		Port:      port,
		JetStream: true,
		StoreDir:  storeDir,
		NoSigs:    true,
		NoLog:     true,
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		s.cleanup()
		return nil, fmt.Errorf("create embedded NATS server: %w", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		s.cleanup()
		return nil, fmt.Errorf("embedded NATS server not ready after 10s")
	}
	s.Server = srv
	return s, nil
}

// Shutdown stops the server and removes a temporary store directory.
func (s *Server) Shutdown() {
	s.Server.Shutdown()
	s.Server.WaitForShutdown()
	s.cleanup()
}

func (s *Server) cleanup() {
	if s.removeDir != "" {
		_ = os.RemoveAll(s.removeDir)
	}
}
