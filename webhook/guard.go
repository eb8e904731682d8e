package webhook

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"time"
)

// ErrBlockedAddress is wrapped by the error of a request whose destination
// resolved to a blocked address.
var ErrBlockedAddress = errors.New("destination address is blocked")

// blockedPrefixes are the ranges a webhook may not reach unless an allowed
// prefix admits them: every special-purpose range that is not globally
// routable or that hosts cloud metadata services.
var blockedPrefixes = mustPrefixes(
	"0.0.0.0/8",       // "this network"
	"10.0.0.0/8",      // private
	"100.64.0.0/10",   // carrier-grade NAT; Alibaba Cloud metadata is 100.100.100.200
	"127.0.0.0/8",     // loopback
	"169.254.0.0/16",  // link-local; AWS, GCP and Azure metadata is 169.254.169.254
	"172.16.0.0/12",   // private
	"192.0.0.0/24",    // IETF protocol assignments
	"192.0.2.0/24",    // documentation
	"192.168.0.0/16",  // private
	"198.18.0.0/15",   // benchmarking
	"198.51.100.0/24", // documentation
	"203.0.113.0/24",  // documentation
	"224.0.0.0/4",     // multicast
	"240.0.0.0/4",     // reserved, and 255.255.255.255 broadcast
	"::/128",          // unspecified
	"::1/128",         // loopback
	"64:ff9b:1::/48",  // local-use IPv4/IPv6 translation
	"100::/64",        // discard-only
	"2001::/23",       // IETF protocol assignments, including Teredo
	"2001:db8::/32",   // documentation
	"fc00::/7",        // unique local; AWS IPv6 metadata is fd00:ec2::254
	"fe80::/10",       // link-local
	"fec0::/10",       // deprecated site-local
	"ff00::/8",        // multicast
)

// Prefixes that embed an IPv4 address, which is checked in turn.
var (
	nat64Prefix = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour   = netip.MustParsePrefix("2002::/16")
)

func mustPrefixes(texts ...string) []netip.Prefix {
	prefixes := make([]netip.Prefix, len(texts))
	for i, text := range texts {
		prefixes[i] = netip.MustParsePrefix(text)
	}
	return prefixes
}

// ParseAllowedPrefixes reads a comma-separated list of CIDR prefixes or
// single addresses, the format of WEBHOOK_ALLOWED_CIDRS.
func ParseAllowedPrefixes(text string) ([]netip.Prefix, error) {
	var prefixes []netip.Prefix
	for _, part := range strings.Split(text, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		if prefix, err := netip.ParsePrefix(part); err == nil {
			prefixes = append(prefixes, prefix.Masked())
			continue
		}
		addr, err := netip.ParseAddr(part)
		if err != nil {
			return nil, fmt.Errorf("allowed CIDR %q is neither a prefix such as 127.0.0.1/32 nor an address", part)
		}
		prefixes = append(prefixes, netip.PrefixFrom(addr, addr.BitLen()))
	}
	return prefixes, nil
}

// addressGuard decides which destination addresses a request may reach.
type addressGuard struct {
	allowed []netip.Prefix
}

// check returns an error wrapping ErrBlockedAddress when addr is in a blocked
// range and no allowed prefix contains it. An IPv4-mapped IPv6 address is
// checked as the IPv4 address it maps, and NAT64 and 6to4 addresses are also
// checked as the IPv4 address they embed.
func (g addressGuard) check(addr netip.Addr) error {
	addr = addr.WithZone("")
	candidates := []netip.Addr{addr, addr.Unmap()}
	if addr.Is6() && nat64Prefix.Contains(addr) {
		bytes := addr.As16()
		candidates = append(candidates, netip.AddrFrom4([4]byte(bytes[12:16])))
	}
	if addr.Is6() && sixToFour.Contains(addr) {
		bytes := addr.As16()
		candidates = append(candidates, netip.AddrFrom4([4]byte(bytes[2:6])))
	}
	for _, candidate := range candidates {
		if g.isAllowed(candidate) {
			return nil
		}
	}
	for _, candidate := range candidates {
		for _, prefix := range blockedPrefixes {
			if prefix.Contains(candidate) {
				return fmt.Errorf("%w: %s is in %s", ErrBlockedAddress, addr, prefix)
			}
		}
	}
	return nil
}

func (g addressGuard) isAllowed(addr netip.Addr) bool {
	for _, prefix := range g.allowed {
		if prefix.Contains(addr) {
			return true
		}
	}
	return false
}

// resolver looks up a host's addresses; *net.Resolver satisfies it.
type resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// dialFunc opens a connection to an address that is already an IP and port.
type dialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// guardedDialer resolves the host itself, checks every resolved address and
// dials only a checked address, so a DNS answer that changes between the
// check and the connection (DNS rebinding) cannot slip through. The
// net.Dialer's Control hook checks the socket's address once more just before
// connect.
type guardedDialer struct {
	dial     dialFunc
	guard    addressGuard
	resolver resolver
}

func (d *guardedDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, fmt.Errorf("split address %q: %w", address, err)
	}
	var addrs []netip.Addr
	if literal, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{literal}
	} else {
		addrs, err = d.resolver.LookupNetIP(ctx, "ip", host)
		if err != nil {
			return nil, fmt.Errorf("resolve %s: %w", host, err)
		}
		if len(addrs) == 0 {
			return nil, fmt.Errorf("resolve %s: no addresses", host)
		}
	}
	// One blocked address rejects the host: a public name that also resolves
	// to an internal address is suspect.
	for _, addr := range addrs {
		if err := d.guard.check(addr); err != nil {
			return nil, fmt.Errorf("dial %s: %w", host, err)
		}
	}
	var lastErr error
	for _, addr := range addrs {
		conn, err := d.dial(ctx, network, net.JoinHostPort(addr.Unmap().String(), port))
		if err == nil {
			return conn, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

// newNetDialer returns the production dial function: a net.Dialer whose
// Control hook rejects blocked addresses right before connect.
func newNetDialer(guard addressGuard, timeout time.Duration) dialFunc {
	dialer := &net.Dialer{
		Timeout: timeout,
		Control: func(_, address string, _ syscall.RawConn) error {
			addrPort, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("%w: cannot parse socket address %q", ErrBlockedAddress, address)
			}
			return guard.check(addrPort.Addr())
		},
	}
	return dialer.DialContext
}

// newHTTPClient returns the client for webhook requests: guarded dials, no
// proxy (a proxy would dial on the client's behalf, unchecked), no redirects
// and a timeout over the whole request.
func newHTTPClient(cfg *Config) *http.Client {
	guard := addressGuard{allowed: cfg.AllowedPrefixes}
	dial := cfg.dial
	if dial == nil {
		dial = newNetDialer(guard, cfg.RequestTimeout)
	}
	var lookup resolver = net.DefaultResolver
	if cfg.resolver != nil {
		lookup = cfg.resolver
	}
	dialer := &guardedDialer{dial: dial, guard: guard, resolver: lookup}
	transport := &http.Transport{
		DialContext:           dialer.DialContext,
		Proxy:                 nil,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          100,
		MaxIdleConnsPerHost:   cfg.EndpointConcurrency,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
		ResponseHeaderTimeout: cfg.RequestTimeout,
	}
	return &http.Client{
		Transport: transport,
		Timeout:   cfg.RequestTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}
