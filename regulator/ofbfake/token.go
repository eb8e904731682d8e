package ofbfake

import (
	"crypto/rand"
	"encoding/json"
	"net/http"
	"strings"

	"github.com/finnest/eventruntime/regulator/ofb"
)

// handleToken serves POST /token/ and /token-fresh/. Both issue a new token
// for the organisation in the verified client certificate.
func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.tokenRequests++
	if r.URL.Path == ofb.TokenFreshPath {
		s.freshTokenRequests++
	}
	s.mu.Unlock()

	orgID := certificateOrgID(r)
	if orgID == "" {
		writeMessage(w, http.StatusUnauthorized, "Client certificate required")
		return
	}
	if err := r.ParseForm(); err != nil {
		writeOAuthError(w, "invalid_request", "Invalid form body")
		return
	}
	if r.PostForm.Get("grant_type") != "client_credentials" {
		writeOAuthError(w, "unsupported_grant_type", "Unsupported grant_type")
		return
	}
	clientID := r.PostForm.Get("client_id")
	if clientID == "" {
		writeOAuthError(w, "invalid_client", "Invalid client credentials")
		return
	}

	token := rand.Text() + rand.Text()
	s.mu.Lock()
	s.tokens[token] = issuedToken{
		clientID: clientID,
		expiry:   s.now().Add(s.tokenLifetime),
		orgID:    orgID,
	}
	s.mu.Unlock()

	// The fields of the spec's SecurityResponse, all of which it requires.
	writeJSON(w, http.StatusOK, map[string]any{
		"statusCode":         http.StatusOK,
		"access_token":       token,
		"expires_in":         int64(s.tokenLifetime.Seconds()),
		"refresh_expires_in": "0",
		"token_type":         "Bearer",
		"not-before-policy":  0,
		"scope":              "",
	})
}

// certificateOrgID returns the organisation id of a verified client
// certificate, its first subject organizational unit, or "" when the
// connection has none.
func certificateOrgID(r *http.Request) string {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return ""
	}
	units := r.TLS.VerifiedChains[0][0].Subject.OrganizationalUnit
	if len(units) == 0 {
		return ""
	}
	return units[0]
}

// authorize returns the token of a report API request's bearer header, or
// ok false after writing a 401 response.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request) (issuedToken, bool) {
	token, found := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !found || token == "" {
		writeMessage(w, http.StatusUnauthorized, "Unauthorized")
		return issuedToken{}, false
	}

	s.mu.Lock()
	issued, known := s.tokens[token]
	now := s.now()
	s.mu.Unlock()
	if !known || !now.Before(issued.expiry) {
		writeMessage(w, http.StatusUnauthorized, "Unauthorized")
		return issuedToken{}, false
	}
	return issued, true
}

func writeOAuthError(w http.ResponseWriter, code, description string) {
	writeJSON(w, http.StatusBadRequest, map[string]string{"error": code, "error_description": description})
}

func writeMessage(w http.ResponseWriter, status int, message string) {
	writeJSON(w, status, map[string]string{"message": cleanMessage(message)})
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	encoded, err := json.Marshal(body)
	if err != nil {
		http.Error(w, "encode response", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(encoded)
}

// cleanMessage fits a message to the spec's pattern for messages,
// ^[- /:_.',0-9a-zA-Z]{0,200}$, by replacing other characters with spaces
// and cutting it to 200 characters.
func cleanMessage(message string) string {
	var b strings.Builder
	lastSpace := false
	for _, r := range message {
		allowed := r == '-' || r == ' ' || r == '/' || r == ':' || r == '_' || r == '.' ||
			r == '\'' || r == ',' || (r >= '0' && r <= '9') || (r >= 'a' && r <= 'z') ||
			(r >= 'A' && r <= 'Z')
		if !allowed || r == ' ' {
			if !lastSpace {
				b.WriteByte(' ')
			}
			lastSpace = true
			continue
		}
		b.WriteRune(r)
		lastSpace = false
		if b.Len() >= 200 {
			break
		}
	}
	return strings.TrimSpace(b.String())
}
