package api

import (
	"context"
	"crypto/x509"
	"fmt"
	"net/http"
	"strings"
)

type identityKey struct{}

// IdentityFrom returns the identity a guarded handler's request was
// authenticated as.
func IdentityFrom(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(Identity)
	return id, ok
}

// denial is why a request is refused: status 401 or 403, reason for the
// log, message for the client.
type denial struct {
	status  int
	reason  string
	message string
}

// authenticate finds who made r. A request that carries an Authorization
// header is judged by it alone (a bad token is not rescued by a
// certificate); otherwise a verified client certificate counts.
func (s *Server) authenticate(r *http.Request) (Identity, *denial) {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, token, _ := strings.Cut(h, " ")
		token = strings.TrimSpace(token)
		switch {
		case !strings.EqualFold(scheme, "Bearer") || token == "":
			return Identity{}, &denial{http.StatusUnauthorized, "authorization header is not a bearer token", "authorization: want Bearer TOKEN"}
		case s.tokens == nil:
			return Identity{}, &denial{http.StatusUnauthorized, "bearer token given but no tokens file is configured", "bearer tokens are not accepted here; use a client certificate"}
		}
		if err := s.tokens.refresh(); err != nil {
			// The previous tokens stay in force; the broken file is
			// reported once per version.
			s.log.Error("api tokens file not reloaded", "err", err)
		}
		id, ok := s.tokens.lookup(token)
		if !ok {
			return Identity{}, &denial{http.StatusUnauthorized, "unknown bearer token", "invalid bearer token"}
		}
		return id, nil
	}
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && len(r.TLS.VerifiedChains[0]) > 0 {
		return certIdentity(r.TLS.VerifiedChains[0][0])
	}
	return Identity{}, &denial{http.StatusUnauthorized, "no credentials", "authentication required: send Authorization: Bearer TOKEN" + s.certHint()}
}

func (s *Server) certHint() string {
	if s.tls != nil && s.tls.ClientCAs != nil {
		return " or a client certificate"
	}
	return ""
}

// certIdentity is a verified client certificate's identity: its CN, with
// the role of its first OU that names one.
func certIdentity(c *x509.Certificate) (Identity, *denial) {
	id := Identity{Name: c.Subject.CommonName, Via: "certificate"}
	if err := ValidTokenName(id.Name); err != nil {
		return id, &denial{http.StatusForbidden, "client certificate CN: " + err.Error(), "client certificate: its CN is not a usable name"}
	}
	for _, ou := range c.Subject.OrganizationalUnit {
		if role, err := ParseRole(ou); err == nil {
			id.Role = role
			return id, nil
		}
	}
	return id, &denial{http.StatusForbidden, fmt.Sprintf("client certificate OUs %q name no role", c.Subject.OrganizationalUnit), "client certificate: no OU names a role (read, trigger, restore, admin)"}
}

// guard lets through requests whose identity has at least role need, with
// the identity in their context.
func (s *Server) guard(need Role, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, d := s.authenticate(r)
		if d == nil && id.Role < need {
			d = &denial{http.StatusForbidden,
				fmt.Sprintf("role %s lacks %s", id.Role, need),
				fmt.Sprintf("forbidden: this needs the %s role, %s has %s", need, id.Name, id.Role)}
		}
		if d != nil {
			s.deny(w, r, id, d)
			return
		}
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), identityKey{}, id)))
	})
}

// deny answers and logs a refused request. Neither names the token.
func (s *Server) deny(w http.ResponseWriter, r *http.Request, id Identity, d *denial) {
	attrs := []any{"method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "status", d.status, "reason", d.reason}
	if id.Name != "" {
		attrs = append(attrs, "identity", id.Name, "via", id.Via)
	}
	s.log.Warn("api request denied", attrs...)
	if d.status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="backstream"`)
	}
	writeJSON(w, d.status, map[string]string{"error": d.message})
}
