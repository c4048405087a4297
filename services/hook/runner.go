package hook

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver

	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/secret"
	"github.com/backstream/backstream/pkg/source/mariadb"
	"github.com/backstream/backstream/pkg/source/postgres"
	"github.com/backstream/backstream/services/stage"
)

// Outcome of one op.
type Outcome struct {
	Output   string
	ExitCode *int
	TimedOut bool
}

// ErrTimeout marks an op that outlived its timeout and was killed.
var ErrTimeout = errors.New("op timed out")

// opEnv is the environment exec and kubernetes ops get besides the hook's
// own: which plan, run and step they serve, and whether they run as an
// inverse op in compensation. It never holds secrets.
func opEnv(planName, runID, step string, inverse bool) []string {
	inv := "0"
	if inverse {
		inv = "1"
	}
	return []string{"BACKSTREAM_PLAN=" + planName, "BACKSTREAM_RUN_ID=" + runID, "BACKSTREAM_STEP=" + step, "BACKSTREAM_INVERSE=" + inv}
}

// runOp runs one op of hook h, unless h runs a command and this service
// refuses exec: every op, inverse ops in compensation included, passes
// here, so a refused serve never starts a process for a hook.
func (s *Service) runOp(ctx context.Context, p *plan.Plan, h *plan.Hook, op *plan.Op, timeout time.Duration, env []string) (Outcome, error) {
	if s.RefuseExec && (h.Type == plan.HookExec || h.Type == plan.HookKubernetes) {
		where := fmt.Sprintf("%s hook %s", h.Type, h.Name)
		for i := range p.Spec.Hooks {
			if p.Spec.Hooks[i].Name == h.Name {
				where = fmt.Sprintf("spec.hooks[%d] (%s)", i, where)
			}
		}
		return Outcome{}, fmt.Errorf("%w: %s", stage.ErrExecRefused, where)
	}
	return runOp(ctx, p, h, op, timeout, env)
}

// runOp runs one op of hook h within timeout; env is added to exec and
// kubernetes ops' environment.
func runOp(ctx context.Context, p *plan.Plan, h *plan.Hook, op *plan.Op, timeout time.Duration, env []string) (Outcome, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var out Outcome
	var err error
	switch h.Type {
	case plan.HookExec:
		out, err = runExec(ctx, h, op.Command, env)
	case plan.HookSQL:
		err = runSQL(ctx, p, op.SQL)
	case plan.HookHTTP:
		out, err = runHTTP(ctx, h, op.HTTP)
	case plan.HookKubernetes:
		out, err = runKubectl(ctx, h, op, env)
	default:
		err = fmt.Errorf("hook type %q cannot run", h.Type)
	}
	if err != nil && ctx.Err() == context.DeadlineExceeded {
		out.TimedOut = true
		err = fmt.Errorf("%w after %s (killed with its children): %v", ErrTimeout, timeout, err)
	}
	return out, err
}

// outputTail is how much of an op's output is kept: the tail of an exec
// op's stdout and stderr, the start of an http response's body.
const outputTail = 4096

// tail keeps the last n bytes written to it.
type tail struct {
	mu  sync.Mutex
	buf []byte
	n   int
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.n {
		t.buf = t.buf[len(t.buf)-t.n:]
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.buf))
}

// runExec runs the op's argv, no shell, in its own process group: a timeout
// kills the group, so the op's children die with it.
func runExec(ctx context.Context, h *plan.Hook, argv []string, env []string) (Outcome, error) {
	if len(argv) == 0 {
		return Outcome{}, errors.New("command: empty")
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	cmd.Env = append(os.Environ(), env...)
	if h.Exec != nil {
		cmd.Dir = h.Exec.Workdir
		for k, ref := range h.Exec.Env {
			v, err := ref.Resolve()
			if err != nil {
				return Outcome{}, fmt.Errorf("env %s: %w", k, err)
			}
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	// The output is redacted before the tail cuts it, so a secret the op
	// echoes never survives, not even the half of one cut by the tail.
	out := &tail{n: outputTail}
	rw := secret.NewWriter(out)
	cmd.Stdout, cmd.Stderr = rw, rw
	err := cmd.Run()
	_ = rw.Close() // a tail's Write never fails
	res := Outcome{Output: out.String()}
	if cmd.ProcessState != nil {
		code := cmd.ProcessState.ExitCode()
		res.ExitCode = &code
	}
	if err != nil {
		if res.Output != "" {
			return res, fmt.Errorf("%s: %w: %s", argv[0], err, lastLine(res.Output))
		}
		return res, fmt.Errorf("%s: %w", argv[0], err)
	}
	return res, nil
}

// runKubectl runs the op through kubectl exec in every pod the hook
// selects (the first one only with singlePodOnly), one after the other; the
// first failure ends the op. It needs kubectl and a kubeconfig on the hook
// service's host, and is not tested here: no cluster runs in CI.
func runKubectl(ctx context.Context, h *plan.Hook, op *plan.Op, env []string) (Outcome, error) {
	k := h.Kubernetes
	if k == nil {
		return Outcome{}, errors.New("kubernetes: block required")
	}
	pods, err := selectPods(ctx, k)
	if err != nil {
		return Outcome{}, err
	}
	container := op.Container
	if container == "" {
		container = k.Container
	}
	var last Outcome
	for _, pod := range pods {
		argv := []string{"kubectl", "exec"}
		if k.Namespace != "" {
			argv = append(argv, "-n", k.Namespace)
		}
		argv = append(argv, pod)
		if container != "" {
			argv = append(argv, "-c", container)
		}
		argv = append(append(argv, "--"), op.Command...)
		if last, err = runExec(ctx, &plan.Hook{Exec: h.Exec}, argv, env); err != nil {
			return last, fmt.Errorf("pod %s: %w", pod, err)
		}
	}
	return last, nil
}

// selectPods lists the pods (pod/NAME) the kubernetes block selects.
func selectPods(ctx context.Context, k *plan.KubernetesHook) ([]string, error) {
	argv := []string{"get", "pods", "-o", "name", "--field-selector=status.phase=Running"}
	if k.Namespace != "" {
		argv = append(argv, "-n", k.Namespace)
	}
	if k.LabelSelector != "" {
		argv = append(argv, "-l", k.LabelSelector)
	}
	var nameRE *regexp.Regexp
	if k.NameSelector != "" {
		re, err := regexp.Compile(k.NameSelector)
		if err != nil {
			return nil, fmt.Errorf("kubernetes: nameSelector: %w", err)
		}
		nameRE = re
	}
	out, err := exec.CommandContext(ctx, "kubectl", argv...).Output()
	if err != nil {
		return nil, fmt.Errorf("kubernetes: list pods: %w", err)
	}
	var pods []string
	for _, line := range strings.Fields(string(out)) {
		if nameRE != nil && !nameRE.MatchString(strings.TrimPrefix(line, "pod/")) {
			continue
		}
		pods = append(pods, line)
		if k.SinglePodOnly {
			break
		}
	}
	if len(pods) == 0 {
		return nil, errors.New("kubernetes: no running pod matches the selection")
	}
	return pods, nil
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// runSQL runs a statement on the plan's data service, connecting with the
// source block's settings and credentials.
func runSQL(ctx context.Context, p *plan.Plan, stmt string) error {
	driver, dsn, err := sqlDSN(p)
	if err != nil {
		return err
	}
	db, err := sql.Open(driver, dsn)
	if err != nil {
		return fmt.Errorf("sql: open: %w", err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, stmt); err != nil {
		return fmt.Errorf("sql: %w", err)
	}
	return nil
}

func sqlDSN(p *plan.Plan) (driver, dsn string, err error) {
	switch p.Spec.Source.Type {
	case "mariadb":
		var c mariadb.Config
		if err := p.Spec.Source.Decode(&c); err != nil {
			return "", "", err
		}
		mc := mysql.NewConfig()
		mc.User = c.User
		if mc.User == "" {
			mc.User = "root"
		}
		if !c.Password.IsZero() {
			if mc.Passwd, err = c.Password.Resolve(); err != nil {
				return "", "", err
			}
		}
		switch {
		case c.Socket != "":
			mc.Net, mc.Addr = "unix", c.Socket
		default:
			host, port := c.Host, c.Port
			if host == "" {
				host = "127.0.0.1"
			}
			if port == 0 {
				port = 3306
			}
			mc.Net, mc.Addr = "tcp", host+":"+strconv.Itoa(port)
		}
		mc.Timeout = 10 * time.Second
		// An op may hold several statements (lock, then record it).
		mc.MultiStatements = true
		return "mysql", mc.FormatDSN(), nil
	case "postgres":
		var c postgres.Config
		if err := p.Spec.Source.Decode(&c); err != nil {
			return "", "", err
		}
		host, port, user := c.Host, c.Port, c.User
		if host == "" {
			host = "127.0.0.1"
		}
		if port == 0 {
			port = 5432
		}
		if user == "" {
			user = "postgres"
		}
		parts := []string{"host=" + host, "port=" + strconv.Itoa(port), "user=" + user, "connect_timeout=10"}
		if !c.Password.IsZero() {
			pw, err := c.Password.Resolve()
			if err != nil {
				return "", "", err
			}
			parts = append(parts, "password='"+strings.ReplaceAll(pw, "'", `\'`)+"'")
		}
		if len(c.Databases) > 0 {
			parts = append(parts, "dbname="+c.Databases[0])
		}
		if c.SSLMode != "" {
			parts = append(parts, "sslmode="+c.SSLMode)
		} else {
			parts = append(parts, "sslmode=disable")
		}
		return "pgx", strings.Join(parts, " "), nil
	}
	return "", "", fmt.Errorf("sql hooks need a mariadb or postgres source, not %q", p.Spec.Source.Type)
}

// runHTTP sends the op's request and checks the status.
func runHTTP(ctx context.Context, h *plan.Hook, r *plan.HTTPRequest) (Outcome, error) {
	if r == nil {
		return Outcome{}, errors.New("http: request required")
	}
	url := r.URL
	if h.HTTP != nil && h.HTTP.BaseURL != "" && !strings.Contains(url, "://") {
		url = strings.TrimRight(h.HTTP.BaseURL, "/") + "/" + strings.TrimLeft(url, "/")
	}
	method := r.Method
	if method == "" {
		method = http.MethodPost
	}
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(r.Body))
	if err != nil {
		return Outcome{}, fmt.Errorf("http: %w", err)
	}
	if h.HTTP != nil {
		for k, v := range h.HTTP.Headers {
			req.Header.Set(k, v)
		}
	}
	for k, v := range r.Headers {
		req.Header.Set(k, v)
	}
	if h.HTTP != nil {
		// Set last: a credential header is never replaced by a plain one.
		for k, ref := range h.HTTP.SecretHeaders {
			v, err := ref.Resolve()
			if err != nil {
				return Outcome{}, fmt.Errorf("http: header %s: %w", k, err)
			}
			req.Header.Set(k, v)
		}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return Outcome{}, fmt.Errorf("http %s %s: %w", method, url, err)
	}
	defer resp.Body.Close()
	body, _ := secret.Head(resp.Body, outputTail) // a server echoing a secret header
	want := r.ExpectStatus
	out := Outcome{Output: strings.TrimSpace(body)}
	if (want == 0 && resp.StatusCode/100 != 2) || (want != 0 && resp.StatusCode != want) {
		return out, fmt.Errorf("http %s %s: status %d, want %s", method, url, resp.StatusCode, expectText(want))
	}
	return out, nil
}

func expectText(want int) string {
	if want == 0 {
		return "2xx"
	}
	return strconv.Itoa(want)
}
