package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Standard Webhooks request headers.
const (
	HeaderID        = "webhook-id"
	HeaderSignature = "webhook-signature"
	HeaderTimestamp = "webhook-timestamp"
)

// errNoActiveSecret is returned by signatureHeader when every secret of a
// subscription has expired.
var errNoActiveSecret = errors.New("the subscription has no active signing secret")

// signatureHeader returns the webhook-signature value for one attempt: a
// space-separated "v1,<base64 HMAC-SHA256>" entry for each secret active at
// timestamp, over "<id>.<unix seconds>.<body>" as the Standard Webhooks
// specification defines.
func signatureHeader(secrets []Secret, id string, timestamp time.Time, body []byte) (string, error) {
	var entries []string
	for _, secret := range secrets {
		if !secret.ActiveAt(timestamp) {
			continue
		}
		key, err := ParseSecret(secret.Value)
		if err != nil {
			return "", err
		}
		mac := hmac.New(sha256.New, key)
		mac.Write([]byte(id))
		mac.Write([]byte{'.'})
		mac.Write([]byte(strconv.FormatInt(timestamp.Unix(), 10)))
		mac.Write([]byte{'.'})
		mac.Write(body)
		entries = append(entries, "v1,"+base64.StdEncoding.EncodeToString(mac.Sum(nil)))
	}
	if len(entries) == 0 {
		return "", errNoActiveSecret
	}
	return strings.Join(entries, " "), nil
}

// setSignedHeaders sets the Standard Webhooks headers and the content type on
// header for one attempt at timestamp.
func setSignedHeaders(header http.Header, secrets []Secret, id string, timestamp time.Time, body []byte) error {
	signature, err := signatureHeader(secrets, id, timestamp, body)
	if err != nil {
		return err
	}
	header.Set(HeaderID, id)
	header.Set(HeaderTimestamp, strconv.FormatInt(timestamp.Unix(), 10))
	header.Set(HeaderSignature, signature)
	header.Set("Content-Type", "application/json")
	header.Set("User-Agent", "eventruntime-webhooks/1")
	return nil
}
