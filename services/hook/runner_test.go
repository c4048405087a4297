package hook

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/secret"
)

// token puts a fresh secret value into an environment variable and returns
// both; the value is registered only when an op resolves it.
func token(t *testing.T) (env, value string) {
	t.Helper()
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	env, value = "BS_HOOK_TEST_TOKEN", "tok-"+hex.EncodeToString(b)
	t.Setenv(env, value)
	return env, value
}

// leaks reports whether s holds v or any piece of it MinLen bytes long at
// either end (what a cut through the value would leave).
func leaks(s, v string) bool {
	for i := secret.MinLen; i <= len(v); i++ {
		if strings.Contains(s, v[:i]) || strings.Contains(s, v[len(v)-i:]) {
			return true
		}
	}
	return false
}

func TestExecOutputIsRedactedBeforeTheTailIsCut(t *testing.T) {
	env, v := token(t)
	h := &plan.Hook{Name: "h", Type: plan.HookExec, Exec: &plan.ExecHook{Env: map[string]secret.Ref{"TOKEN": {Env: env}}}}
	tests := []struct {
		name     string
		script   string
		wantErr  bool
		wantTail string
	}{
		{"stdout and stderr", `echo "token=$TOKEN"; echo "stderr $TOKEN" >&2`, false, "token=" + secret.Mask + "\nstderr " + secret.Mask},
		// The value ends 5 bytes inside the kept tail: cut first, its last
		// bytes would survive.
		{"value straddles the cut", `printf '%s' "$TOKEN"; head -c ` + strconv.Itoa(outputTail-5) + ` /dev/zero | tr '\0' b`, false, ""},
		{"quoted in the error", `echo "auth failed for $TOKEN"; exit 3`, true, "auth failed for " + secret.Mask},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			op := &plan.Op{Name: "o", Command: plan.Command{"sh", "-c", tt.script}}
			out, err := runOp(context.Background(), &plan.Plan{}, h, op, 10*time.Second, nil)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v", err)
			}
			if leaks(out.Output, v) || (err != nil && leaks(err.Error(), v)) {
				t.Fatalf("the value leaks: output %q, err %v", out.Output, err)
			}
			if tt.wantTail != "" && out.Output != tt.wantTail {
				t.Fatalf("output %q, want %q", out.Output, tt.wantTail)
			}
			if len(out.Output) > outputTail {
				t.Fatalf("output of %d bytes, more than %d", len(out.Output), outputTail)
			}
		})
	}
}

func TestHTTPSecretHeaderIsSentAndItsEchoRedacted(t *testing.T) {
	env, v := token(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+v {
			http.Error(w, "no auth: "+r.Header.Get("Authorization"), http.StatusUnauthorized)
			return
		}
		_, _ = w.Write([]byte("hello " + r.Header.Get("Authorization")))
	}))
	defer srv.Close()
	// The bearer prefix goes with the value: Authorization is one header.
	t.Setenv(env, "Bearer "+v)
	h := &plan.Hook{Name: "h", Type: plan.HookHTTP, HTTP: &plan.HTTPHook{
		BaseURL:       srv.URL,
		Headers:       map[string]string{"Authorization": "plain values lose"},
		SecretHeaders: map[string]secret.Ref{"Authorization": {Env: env}},
	}}
	op := &plan.Op{Name: "o", HTTP: &plan.HTTPRequest{URL: "/x"}}
	out, err := runOp(context.Background(), &plan.Plan{}, h, op, 10*time.Second, nil)
	if err != nil {
		t.Fatalf("request: %v (output %q)", err, out.Output)
	}
	if out.Output != "hello "+secret.Mask || leaks(out.Output, v) {
		t.Fatalf("output %q", out.Output)
	}
}
