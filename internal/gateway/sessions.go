package gateway

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/trustmesh/trustmesh/internal/gateway/session"
)

// A session cookie holds 32 random bytes (base64url) and nothing else. The
// store key is a hash of them and the record is sealed (AES-256-GCM) with
// a key derived from them, so the store alone yields neither a usable
// cookie nor any token.

// sessionData is what a sealed record holds.
type sessionData struct {
	Provider          string         `json:"provider"`
	Issuer            string         `json:"iss"`
	Subject           string         `json:"sub"`
	User              string         `json:"user"`
	Email             string         `json:"email,omitempty"`
	EmailVerified     bool           `json:"email_verified,omitempty"`
	PreferredUsername string         `json:"preferred_username,omitempty"`
	Groups            []string       `json:"groups,omitempty"`
	Scopes            []string       `json:"scopes,omitempty"`
	Audiences         []string       `json:"aud,omitempty"`
	Presenter         string         `json:"azp,omitempty"`
	Claims            map[string]any `json:"claims,omitempty"`
	IDToken           string         `json:"id_token,omitempty"`
	AccessToken       string         `json:"access_token,omitempty"`
	RefreshToken      string         `json:"refresh_token,omitempty"`
	TokenExpiry       time.Time      `json:"token_expiry"`
	// UnverifiedSince is when refreshes began returning ID tokens that do
	// not verify (zero: the last one did); the session's identity is that
	// old, and it ends after maxUnverifiedIdentity.
	UnverifiedSince time.Time `json:"unverified_since,omitzero"`
	CreatedAt       time.Time `json:"created_at"`
	LastSeen        time.Time `json:"last_seen"`
}

const cookieSecretLen = 32

// sessionID is a parsed cookie: the secret and what derives from it.
type sessionID struct {
	secret []byte
	key    string // store key
}

func newSessionID() (sessionID, string, error) {
	b := make([]byte, cookieSecretLen)
	if _, err := rand.Read(b); err != nil {
		return sessionID{}, "", err
	}
	v := base64.RawURLEncoding.EncodeToString(b)
	return deriveID(b), v, nil
}

func parseSessionCookie(v string) (sessionID, bool) {
	if len(v) != base64.RawURLEncoding.EncodedLen(cookieSecretLen) {
		return sessionID{}, false
	}
	b, err := base64.RawURLEncoding.DecodeString(v)
	// The decoder skips \r and \n: the length check catches them.
	if err != nil || len(b) != cookieSecretLen {
		return sessionID{}, false
	}
	return deriveID(b), true
}

func deriveID(secret []byte) sessionID {
	h := sha256.New()
	h.Write([]byte("trustmesh gateway session id\x00"))
	h.Write(secret)
	return sessionID{secret: secret, key: hex.EncodeToString(h.Sum(nil))}
}

// ref is a short, non-secret reference for logs: a prefix of the store key
// (itself a hash), enough to correlate lines, useless as a credential.
func (s sessionID) ref() string { return s.key[:12] }

func (s sessionID) subkey(info string) []byte {
	k, err := hkdf.Key(sha256.New, s.secret, nil, "trustmesh gateway "+info, 32)
	if err != nil {
		panic(err) // only for lengths hkdf cannot produce
	}
	return k
}

// csrfToken is the sign-out form's token: bound to the session.
func (s sessionID) csrfToken() string {
	m := hmac.New(sha256.New, s.subkey("csrf"))
	m.Write([]byte("sign_out"))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func seal(key []byte, plaintext []byte, aad string) ([]byte, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(plaintext)+aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return aead.Seal(nonce, nonce, plaintext, []byte(aad)), nil
}

func open(key []byte, sealed []byte, aad string) ([]byte, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	if len(sealed) < aead.NonceSize() {
		return nil, errors.New("sealed record too short")
	}
	return aead.Open(nil, sealed[:aead.NonceSize()], sealed[aead.NonceSize():], []byte(aad))
}

func (s sessionID) sealData(d *sessionData) ([]byte, error) {
	b, err := json.Marshal(d)
	if err != nil {
		return nil, err
	}
	return seal(s.subkey("session record"), b, s.key)
}

func (s sessionID) openData(b []byte) (*sessionData, error) {
	pt, err := open(s.subkey("session record"), b, s.key)
	if err != nil {
		return nil, fmt.Errorf("open session record: %w", err)
	}
	var d sessionData
	if err := json.Unmarshal(pt, &d); err != nil {
		return nil, fmt.Errorf("decode session record: %w", err)
	}
	return &d, nil
}

// liveSession is a session loaded for a request.
type liveSession struct {
	id   sessionID
	rec  session.Record
	data *sessionData
}

// expiresAt is when the store should forget the session: idle timeout or
// maximum lifetime, whichever first.
func (g *Gateway) expiresAt(d *sessionData) time.Time {
	idle := d.LastSeen.Add(g.set.IdleTimeout)
	max := d.CreatedAt.Add(g.set.MaxLifetime)
	if idle.Before(max) {
		return idle
	}
	return max
}

func (g *Gateway) cookieName(provider string) string {
	if len(g.set.Providers) <= 1 {
		return g.set.CookieName
	}
	return g.set.CookieName + "_" + provider
}

func (g *Gateway) csrfCookieName() string { return g.set.CookieName + "_csrf" }

// createSession stores a new session and returns the cookie value.
func (g *Gateway) createSession(ctx context.Context, d *sessionData) (sessionID, string, error) {
	for attempt := 0; attempt < 3; attempt++ {
		id, value, err := newSessionID()
		if err != nil {
			return sessionID{}, "", err
		}
		sealed, err := id.sealData(d)
		if err != nil {
			return sessionID{}, "", err
		}
		err = g.store.Create(ctx, session.Record{Key: id.key, ExpiresAt: g.expiresAt(d), Data: sealed})
		if errors.Is(err, session.ErrExists) {
			continue // 256 random bits collided: try again
		}
		if err != nil {
			return sessionID{}, "", err
		}
		return id, value, nil
	}
	return sessionID{}, "", errors.New("could not allocate a session id")
}

// errNoSession: no cookie, an unknown or expired one.
var errNoSession = errors.New("no session")

// loadSession finds the caller's session for provider, renewing its idle
// timer and refreshing its tokens when due.
func (g *Gateway) loadSession(ctx context.Context, r *http.Request, provider string) (*liveSession, error) {
	name := g.cookieName(provider)
	var lastErr error = errNoSession
	for _, c := range r.Cookies() {
		if c.Name != name {
			continue
		}
		id, ok := parseSessionCookie(c.Value)
		if !ok {
			lastErr = fmt.Errorf("%w: malformed cookie", errNoSession)
			continue
		}
		rec, err := g.store.Get(ctx, id.key)
		if errors.Is(err, session.ErrNotFound) {
			lastErr = fmt.Errorf("%w: session %s unknown or expired", errNoSession, id.ref())
			continue
		}
		if err != nil {
			return nil, err
		}
		d, err := g.decoded(id, rec)
		if err != nil {
			lastErr = fmt.Errorf("%w: session %s: %v", errNoSession, id.ref(), err)
			continue
		}
		if d.Provider != provider {
			lastErr = fmt.Errorf("%w: session %s is from identity provider %q", errNoSession, id.ref(), d.Provider)
			continue
		}
		now := g.now()
		if !now.Before(g.expiresAt(d)) {
			_ = g.store.Delete(ctx, id.key)
			lastErr = fmt.Errorf("%w: session %s expired", errNoSession, id.ref())
			continue
		}
		ls := &liveSession{id: id, rec: rec, data: d}
		if d.RefreshToken != "" && !now.Before(d.TokenExpiry.Add(-g.set.RefreshBefore)) {
			ls, err = g.refreshSession(ctx, ls)
			if err != nil {
				return nil, err // errNoSession when the IdP revoked it
			}
			cp := *ls // shared by the requests that waited on one refresh
			ls = &cp
		}
		g.touch(ctx, ls, now)
		return ls, nil
	}
	return nil, lastErr
}

// touch records activity for the idle timeout, at most once per tenth of
// it, so a busy session does not write on every request.
func (g *Gateway) touch(ctx context.Context, ls *liveSession, now time.Time) {
	if now.Sub(ls.data.LastSeen) < g.set.IdleTimeout/10 {
		return
	}
	d := *ls.data
	d.LastSeen = now
	sealed, err := ls.id.sealData(&d)
	if err != nil {
		return
	}
	rec := ls.rec
	rec.Data, rec.ExpiresAt = sealed, g.expiresAt(&d)
	if next, err := g.store.Update(ctx, rec); err == nil {
		ls.rec, ls.data = next, &d
	} else if !errors.Is(err, session.ErrConflict) {
		g.log.Warn("session touch failed", "session", ls.id.ref(), "err", err)
	}
}

// identity turns a session into the caller's identity.
func (ls *liveSession) identity() *Identity {
	d := ls.data
	return &Identity{
		Method: "session", Provider: d.Provider, Issuer: d.Issuer, Subject: d.Subject, User: d.User,
		Email: d.Email, EmailVerified: d.EmailVerified, PreferredUsername: d.PreferredUsername,
		Groups: d.Groups, Scopes: d.Scopes, Audiences: d.Audiences, Presenter: d.Presenter, Claims: d.Claims,
		SessionRef: ls.id.ref(),
	}
}

// setSessionCookie sends the session cookie for the request's host.
func (g *Gateway) setSessionCookie(w http.ResponseWriter, r *http.Request, provider, value string, maxAge time.Duration) {
	http.SetCookie(w, &http.Cookie{
		Name: g.cookieName(provider), Value: value, Path: "/", Domain: g.cookieDomainFor(r),
		MaxAge: int(maxAge.Seconds()), HttpOnly: true, Secure: g.secureCookies(r), SameSite: http.SameSiteLaxMode,
	})
}

// setLoginCookie sends a host-only cookie that binds a login in flight to
// this browser: only /oauth2/ gets it, for as long as a login may take.
func (g *Gateway) setLoginCookie(w http.ResponseWriter, r *http.Request, name, value string) {
	http.SetCookie(w, &http.Cookie{
		Name: name, Value: value, Path: g.loginCookiePath(), MaxAge: int(g.set.LoginTimeout.Seconds()),
		HttpOnly: true, Secure: g.secureCookies(r), SameSite: http.SameSiteLaxMode,
	})
}

// loginCookiePath scopes the login cookies to /oauth2/, except under a
// __Host- name, which browsers accept only with Path=/.
func (g *Gateway) loginCookiePath() string {
	if cookiePrefix(g.set.CookieName) == hostCookiePrefix {
		return "/"
	}
	return "/oauth2/"
}

// secureCookies: cookies are Secure when the browser reached the gateway
// over https, and always under a __Secure-/__Host- name (config
// validation requires an https external_url for those).
func (g *Gateway) secureCookies(r *http.Request) bool {
	return cookiePrefix(g.set.CookieName) != "" || g.schemeOf(r) == "https"
}

func (g *Gateway) clearCookie(w http.ResponseWriter, r *http.Request, name, path string) {
	http.SetCookie(w, &http.Cookie{
		Name: name, Value: "", Path: path, Domain: g.cookieDomainFor(r), MaxAge: -1,
		HttpOnly: true, Secure: g.secureCookies(r), SameSite: http.SameSiteLaxMode,
	})
}

// cookieDomainFor is the configured cookie domain when it covers the
// request's host, else none (a host-only cookie).
func (g *Gateway) cookieDomainFor(r *http.Request) string {
	d := g.set.CookieDomain
	if d == "" {
		return ""
	}
	if h := hostOnly(g.hostOf(r)); strings.HasSuffix(h, d) {
		return d
	}
	return ""
}

// coveredByCookie reports whether a cookie set on the external host
// reaches host.
func (g *Gateway) coveredByCookie(host string) bool {
	host = hostOnly(host)
	if host == g.set.ExternalURL.Hostname() {
		return true
	}
	return g.set.CookieDomain != "" && strings.HasSuffix(host, g.set.CookieDomain) && strings.HasSuffix(g.set.ExternalURL.Hostname(), g.set.CookieDomain)
}

// decodedCache keeps opened records by store key and version, so a busy
// session is decrypted and decoded once per change, not once per request.
// The store is still asked on every request (a sign-out on another replica
// counts at once); a key is a hash of the cookie, so only that cookie's
// holder can reach its entry.
type decodedCache struct {
	mu sync.Mutex
	m  map[string]decodedEntry
}

type decodedEntry struct {
	version int64
	data    *sessionData
}

const decodedCacheMax = 1 << 16

func (g *Gateway) decoded(id sessionID, rec session.Record) (*sessionData, error) {
	c := &g.decodedSessions
	c.mu.Lock()
	e, ok := c.m[id.key]
	c.mu.Unlock()
	if ok && e.version == rec.Version {
		return e.data, nil
	}
	d, err := id.openData(rec.Data)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.m == nil || len(c.m) >= decodedCacheMax {
		c.m = map[string]decodedEntry{}
	}
	c.m[id.key] = decodedEntry{version: rec.Version, data: d}
	c.mu.Unlock()
	return d, nil
}
