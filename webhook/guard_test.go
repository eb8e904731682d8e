package webhook

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// tripwire is the final dial of the guarded client in these tests. It dials
// loopback addresses and records, but never dials, anything else, so a guard
// failure shows up as a recorded address instead of traffic off the machine.
type tripwire struct {
	mu      sync.Mutex
	offHost []string
}

func (w *tripwire) dial(ctx context.Context, network, address string) (net.Conn, error) {
	addrPort, err := netip.ParseAddrPort(address)
	if err != nil || !addrPort.Addr().Unmap().IsLoopback() {
		w.mu.Lock()
		w.offHost = append(w.offHost, address)
		w.mu.Unlock()
		return nil, &net.OpError{Op: "dial", Net: network, Err: errTripwire}
	}
	var dialer net.Dialer
	return dialer.DialContext(ctx, network, address)
}

func (w *tripwire) dialed() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.offHost...)
}

var errTripwire = &tripwireError{}

type tripwireError struct{}

func (*tripwireError) Error() string { return "tripwire: the guard let a non-loopback address through" }

// fakeResolver answers from a fixed table, so hostnames can resolve to any
// address without DNS.
type fakeResolver map[string][]netip.Addr

func (r fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	addrs, ok := r[host]
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return addrs, nil
}

// hitServer is a loopback server that counts requests.
func hitServer(t *testing.T, status int, header http.Header) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var hits atomic.Int64
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		for name, values := range header {
			w.Header()[name] = values
		}
		w.WriteHeader(status)
	}))
	t.Cleanup(server.Close)
	return server, &hits
}

func guardedClient(t *testing.T, allowed []netip.Prefix, resolve fakeResolver) (*http.Client, *tripwire) {
	t.Helper()
	wire := &tripwire{}
	cfg := &Config{AllowedPrefixes: allowed, RequestTimeout: 5 * time.Second, EndpointConcurrency: 1, dial: wire.dial}
	if resolve != nil {
		cfg.resolver = resolve
	}
	return newHTTPClient(cfg), wire
}

func post(client *http.Client, url string) (*http.Response, error) {
	response, err := client.Post(url, "application/json", strings.NewReader("{}"))
	if err == nil {
		response.Body.Close()
	}
	return response, err
}

func TestGuardBlocksPrivateLiteral(t *testing.T) {
	t.Parallel()
	client, wire := guardedClient(t, nil, nil)
	for _, target := range []string{
		"http://10.0.0.1/hook", "http://192.168.1.10:8080/hook", "http://172.16.5.4/hook",
		"http://169.254.169.254/latest/meta-data/", "http://100.100.100.200/", "http://[fd00:ec2::254]/",
		"http://0.0.0.0/", "http://224.0.0.1/", "http://[fe80::1]/",
	} {
		_, err := post(client, target)
		require.ErrorIs(t, err, ErrBlockedAddress, target)
	}
	require.Empty(t, wire.dialed())
}

func TestGuardBlocksHostnameResolvingToLoopback(t *testing.T) {
	t.Parallel()
	server, hits := hitServer(t, http.StatusOK, nil)
	port := server.Listener.Addr().(*net.TCPAddr).Port

	t.Run("LoopbackAnswer", func(t *testing.T) {
		// The table replaces DNS, so no query leaves the machine.
		client, wire := guardedClient(t, nil, fakeResolver{
			"localhost":         {netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")},
			"customer.example":  {netip.MustParseAddr("127.0.0.1")},
			"customer6.example": {netip.MustParseAddr("::1")},
		})
		for _, host := range []string{"localhost", "customer.example", "customer6.example"} {
			_, err := post(client, "http://"+host+":"+itoa(port)+"/hook")
			require.ErrorIs(t, err, ErrBlockedAddress, host)
		}
		require.Empty(t, wire.dialed())
	})

	t.Run("RebindingAnswer", func(t *testing.T) {
		// A name whose answer mixes a public and a loopback address, as a
		// DNS rebinding attack serves it.
		client, wire := guardedClient(t, nil, fakeResolver{
			"rebind.example": {netip.MustParseAddr("93.184.215.14"), netip.MustParseAddr("127.0.0.1")},
			"inside.example": {netip.MustParseAddr("10.1.2.3")},
		})
		_, err := post(client, "http://rebind.example:"+itoa(port)+"/hook")
		require.ErrorIs(t, err, ErrBlockedAddress)
		_, err = post(client, "http://inside.example/hook")
		require.ErrorIs(t, err, ErrBlockedAddress)
		require.Empty(t, wire.dialed())
	})

	require.Zero(t, hits.Load(), "the loopback server must not be reached")
}

func TestGuardBlocksIPv4MappedIPv6(t *testing.T) {
	t.Parallel()
	server, hits := hitServer(t, http.StatusOK, nil)
	port := itoa(server.Listener.Addr().(*net.TCPAddr).Port)

	client, wire := guardedClient(t, nil, fakeResolver{
		"mapped.example": {netip.MustParseAddr("::ffff:127.0.0.1")},
	})
	for _, target := range []string{
		"http://[::ffff:127.0.0.1]:" + port + "/hook",
		"http://[::ffff:7f00:1]:" + port + "/hook",
		"http://mapped.example:" + port + "/hook",
		"http://[::ffff:169.254.169.254]/",
		"http://[::ffff:10.0.0.1]/",
		"http://[64:ff9b::a9fe:a9fe]/", // NAT64 form of 169.254.169.254
		"http://[2002:a00:1::1]/",      // 6to4 form of 10.0.0.1
	} {
		_, err := post(client, target)
		require.ErrorIs(t, err, ErrBlockedAddress, target)
	}
	require.Empty(t, wire.dialed())
	require.Zero(t, hits.Load())

	t.Run("AllowListAppliesToMappedForm", func(t *testing.T) {
		client, _ := guardedClient(t, []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, nil)
		response, err := post(client, "http://[::ffff:127.0.0.1]:"+port+"/hook")
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, response.StatusCode)
		require.Equal(t, int64(1), hits.Load())
	})
}

func TestGuardNeverFollowsRedirects(t *testing.T) {
	t.Parallel()
	target, targetHits := hitServer(t, http.StatusOK, nil)
	toLoopback, _ := hitServer(t, http.StatusFound, http.Header{"Location": {target.URL + "/landing"}})
	toMetadata, _ := hitServer(t, http.StatusTemporaryRedirect,
		http.Header{"Location": {"http://169.254.169.254/latest/meta-data/"}})

	client, wire := guardedClient(t, []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, nil)
	response, err := post(client, toLoopback.URL+"/hook")
	require.NoError(t, err)
	require.Equal(t, http.StatusFound, response.StatusCode, "the redirect comes back as the response")
	response, err = post(client, toMetadata.URL+"/hook")
	require.NoError(t, err)
	require.Equal(t, http.StatusTemporaryRedirect, response.StatusCode)

	require.Zero(t, targetHits.Load(), "the redirect target must not be requested")
	require.Empty(t, wire.dialed())
}

func TestGuardAllowListOptIn(t *testing.T) {
	t.Parallel()
	server, hits := hitServer(t, http.StatusOK, nil)

	blocked, _ := guardedClient(t, nil, nil)
	_, err := post(blocked, server.URL)
	require.ErrorIs(t, err, ErrBlockedAddress, "loopback is blocked by default")

	allowed, _ := guardedClient(t, []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, nil)
	response, err := post(allowed, server.URL)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, response.StatusCode)
	require.Equal(t, int64(1), hits.Load())
}

func TestGuardDialControlChecksSocketAddress(t *testing.T) {
	t.Parallel()
	server, hits := hitServer(t, http.StatusOK, nil)
	// The Control hook is the last check before connect(2), whatever
	// address reaches the socket.
	dial := newNetDialer(addressGuard{}, time.Second)
	_, err := dial(context.Background(), "tcp", server.Listener.Addr().String())
	require.ErrorIs(t, err, ErrBlockedAddress)
	require.Zero(t, hits.Load())

	dial = newNetDialer(addressGuard{allowed: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}, time.Second)
	conn, err := dial(context.Background(), "tcp", server.Listener.Addr().String())
	require.NoError(t, err)
	conn.Close()
}

func TestAddressGuardCheck(t *testing.T) {
	t.Parallel()
	guard := addressGuard{}
	for _, blocked := range []string{
		"127.0.0.1", "127.8.9.10", "::1", "10.255.0.1", "172.31.255.255", "192.168.0.1", "169.254.169.254",
		"100.64.0.1", "0.0.0.0", "255.255.255.255", "224.0.0.251", "ff02::1", "fe80::1", "fc00::1",
		"fd00:ec2::254", "::", "::ffff:192.168.1.1", "64:ff9b::7f00:1", "2002:7f00:1::", "fe80::1%eth0",
	} {
		require.ErrorIs(t, guard.check(netip.MustParseAddr(blocked)), ErrBlockedAddress, blocked)
	}
	for _, public := range []string{"93.184.215.14", "1.1.1.1", "2606:4700:4700::1111", "::ffff:1.1.1.1", "64:ff9b::101:101"} {
		require.NoError(t, guard.check(netip.MustParseAddr(public)), public)
	}
}

func TestParseAllowedPrefixes(t *testing.T) {
	t.Parallel()
	prefixes, err := ParseAllowedPrefixes(" 127.0.0.1/32, 10.1.0.0/16 ,::1,")
	require.NoError(t, err)
	require.Equal(t, []netip.Prefix{
		netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("::1/128"),
	}, prefixes)
	_, err = ParseAllowedPrefixes("localhost")
	require.ErrorContains(t, err, "localhost")
	empty, err := ParseAllowedPrefixes("")
	require.NoError(t, err)
	require.Empty(t, empty)
}

func itoa(n int) string { return strconv.Itoa(n) }
