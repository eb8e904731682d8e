// Package riverui puts HTTP Basic authentication with two access tiers in
// front of the River UI handler (riverqueue.com/riverui).
//
// A viewer may only read: GET and HEAD requests, which in River UI v0.22.0
// serve the UI's files and the read endpoints of its API (jobs, queues,
// states, features, version). An approver may also use the mutating
// endpoints, which River UI v0.22.0 registers only under POST, PUT and PATCH:
// POST /api/jobs/cancel, /api/jobs/delete and /api/jobs/retry, PUT
// /api/queues/{name}/pause and /resume, and PATCH /api/queues/{name}.
//
// Users come from configuration with bcrypt password hashes, and the package
// never stores or logs a password.
package riverui

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Tier is a user's access level.
type Tier string

// Access tiers.
const (
	// TierViewer may read queues and jobs.
	TierViewer Tier = "viewer"
	// TierApprover may also retry, cancel and delete jobs and pause, resume
	// and update queues.
	TierApprover Tier = "approver"
)

// User is one River UI account.
type User struct {
	Name string
	// PasswordHash is a bcrypt hash, as HashPassword returns.
	PasswordHash []byte
	Tier         Tier
}

// HashCost is the bcrypt cost HashPassword uses.
const HashCost = 12

// HashPassword returns the bcrypt hash of password at HashCost, in the form
// that RIVERUI_USERS takes.
func HashPassword(password []byte) ([]byte, error) {
	if len(password) == 0 {
		return nil, errors.New("password is empty")
	}
	return bcrypt.GenerateFromPassword(password, HashCost)
}

// ParseUsers parses users from spec, a comma-separated list of
// name:tier:hash entries, such as the RIVERUI_USERS environment variable.
// tier is viewer or approver and hash is a bcrypt hash. An empty spec
// returns no users.
func ParseUsers(spec string) ([]User, error) {
	var users []User
	seen := map[string]bool{}
	for i, entry := range strings.Split(spec, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		// A bcrypt hash contains no colon, so the entry splits in three.
		parts := strings.SplitN(entry, ":", 3)
		if len(parts) != 3 {
			return nil, fmt.Errorf("River UI user entry %d is invalid: want name:tier:bcrypt-hash", i+1)
		}
		name, tier, hash := parts[0], Tier(parts[1]), []byte(parts[2])
		if name == "" {
			return nil, fmt.Errorf("River UI user entry %d has an empty name", i+1)
		}
		if seen[name] {
			return nil, fmt.Errorf("River UI user %q appears twice", name)
		}
		seen[name] = true
		if tier != TierViewer && tier != TierApprover {
			return nil, fmt.Errorf("River UI user %q has unknown tier %q: want viewer or approver", name, tier)
		}
		if _, err := bcrypt.Cost(hash); err != nil {
			return nil, fmt.Errorf("River UI user %q: the hash is not a bcrypt hash (%v); "+
				"make one with `eventruntime riverui hash-password`", name, err)
		}
		users = append(users, User{Name: name, PasswordHash: hash, Tier: tier})
	}
	return users, nil
}

// Realm is the realm that 401 answers name in WWW-Authenticate.
const Realm = "River UI"

// verifiedTTL is how long a verified name and password pair is remembered,
// so that the UI's polling does not cost a bcrypt comparison per request.
const verifiedTTL = 5 * time.Minute

// maxVerified bounds the verified-credentials cache, which is cleared when
// full.
const maxVerified = 1024

// Protect returns a handler that authenticates each request with HTTP Basic
// credentials against users and passes it to next when the user's tier
// allows the method. Missing or wrong credentials get 401 with
// WWW-Authenticate, and a viewer's request with a method other than GET or
// HEAD gets 403 and an error log line with the user name.
//
// With no users, the returned handler answers every request with 404 and
// never calls next, so River UI stays off until users are configured.
func Protect(next http.Handler, users []User, logger *slog.Logger) http.Handler {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if len(users) == 0 {
		logger.Warn("River UI is disabled because no River UI users are configured",
			"event", "riverui.disabled")
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, "River UI is disabled: no River UI users are configured (RIVERUI_USERS)",
				http.StatusNotFound)
		})
	}
	key := make([]byte, 32)
	_, _ = rand.Read(key) // crypto/rand.Read never returns an error
	return &guard{
		dummyHash: mustDummyHash(users),
		logger:    logger,
		next:      next,
		users:     users,
		verified:  map[[sha256.Size]byte]verifiedEntry{},
		cacheKey:  key,
	}
}

type guard struct {
	cacheKey  []byte
	dummyHash []byte
	logger    *slog.Logger
	next      http.Handler
	users     []User

	mu       sync.Mutex
	verified map[[sha256.Size]byte]verifiedEntry
}

type verifiedEntry struct {
	expires time.Time
	user    int
}

func (g *guard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name, password, ok := r.BasicAuth()
	if !ok {
		g.challenge(w)
		return
	}
	user, ok := g.authenticate(name, password)
	if !ok {
		g.logger.Warn("River UI authentication failed", "event", "riverui.auth_failed",
			"method", r.Method, "path", r.URL.Path)
		g.challenge(w)
		return
	}
	if user.Tier != TierApprover && r.Method != http.MethodGet && r.Method != http.MethodHead {
		g.logger.Error("River UI mutation denied to a viewer", "event", "riverui.mutation_denied",
			"user", user.Name, "method", r.Method, "path", r.URL.Path)
		http.Error(w, "forbidden: the viewer tier may only read", http.StatusForbidden)
		return
	}
	g.next.ServeHTTP(w, r)
}

func (g *guard) challenge(w http.ResponseWriter) {
	w.Header().Set("WWW-Authenticate", `Basic realm="`+Realm+`", charset="UTF-8"`)
	http.Error(w, "unauthorized", http.StatusUnauthorized)
}

// authenticate returns the user whose name and password match. It compares
// names in constant time against every user and runs one bcrypt comparison
// whether or not the name exists, so response time does not reveal which
// names exist, except that a pair verified in the last verifiedTTL is
// answered from memory.
func (g *guard) authenticate(name, password string) (User, bool) {
	cacheKey := g.cacheKeyOf(name, password)
	now := time.Now()
	g.mu.Lock()
	entry, cached := g.verified[cacheKey]
	g.mu.Unlock()
	if cached && now.Before(entry.expires) {
		return g.users[entry.user], true
	}

	match := -1
	for i, user := range g.users {
		if subtle.ConstantTimeCompare([]byte(user.Name), []byte(name)) == 1 {
			match = i
		}
	}
	hash := g.dummyHash
	if match >= 0 {
		hash = g.users[match].PasswordHash
	}
	err := bcrypt.CompareHashAndPassword(hash, []byte(password))
	if match < 0 || err != nil {
		return User{}, false
	}

	g.mu.Lock()
	if len(g.verified) >= maxVerified {
		clear(g.verified)
	}
	g.verified[cacheKey] = verifiedEntry{expires: now.Add(verifiedTTL), user: match}
	g.mu.Unlock()
	return g.users[match], true
}

// cacheKeyOf returns an HMAC of the pair under a key made at start, so the
// cache holds no password and no hash that could be attacked offline
// without the process's memory.
func (g *guard) cacheKeyOf(name, password string) [sha256.Size]byte {
	mac := hmac.New(sha256.New, g.cacheKey)
	mac.Write([]byte(name))
	mac.Write([]byte{0})
	mac.Write([]byte(password))
	var sum [sha256.Size]byte
	copy(sum[:], mac.Sum(nil))
	return sum
}

// mustDummyHash returns a hash of a random password at the highest cost
// among users, compared against when the name is unknown, so that case costs
// no less time than a known name.
func mustDummyHash(users []User) []byte {
	cost := bcrypt.MinCost
	for _, user := range users {
		if userCost, err := bcrypt.Cost(user.PasswordHash); err == nil {
			cost = max(cost, userCost)
		}
	}
	password := make([]byte, 24)
	_, _ = rand.Read(password)
	hash, err := bcrypt.GenerateFromPassword(password, cost)
	if err != nil {
		panic(fmt.Sprintf("riverui: hash a random password: %v", err))
	}
	return hash
}
