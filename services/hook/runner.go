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
	"time"

	"github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver

	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/pkg/secret"
	"github.com/backstream/backstream/pkg/source/mariadb"
	"github.com/backstream/backstream/pkg/source/postgres"
	"github.com/backstream/backstream/pkg/supervise"
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

// recordFunc records where an op runs (runs.Proc) before the op can take
// effect; an error keeps the op from running. nil records nothing.
type recordFunc func(context.Context, runs.Proc) error

func (f recordFunc) record(ctx context.Context, p runs.Proc) error {
	if f == nil {
		return nil
	}
	return f(ctx, p)
}

// runOp runs one op of hook h, unless h runs a command and this service
// refuses exec: every op, inverse ops in compensation included, passes
// here, so a refused serve never starts a process for a hook.
func (s *Service) runOp(ctx context.Context, p *plan.Plan, h *plan.Hook, op *plan.Op, timeout time.Duration, env []string) (Outcome, error) {
	return s.runRecorded(ctx, p, h, op, timeout, env, nil)
}

// runStepOp runs the op of hook step name of run runID like runOp, and
// records where it runs in the step (runs.Step.Proc) before the op can take
// effect, so that a stage finding this process dead can make sure the op
// is dead too (ensureDead) before undoing it. The record is refused, and
// the op not run, when the step is no longer this process's Running step.
func (s *Service) runStepOp(ctx context.Context, p *plan.Plan, runID, name string, h *plan.Hook, op *plan.Op, timeout time.Duration, env []string) (Outcome, error) {
	return s.runRecorded(ctx, p, h, op, timeout, env, s.recordProc(runID, name))
}

// errNotOurs refuses to record an op's process in a step this process no
// longer runs (another replica declared it interrupted meanwhile).
var errNotOurs = runs.ErrNotOwner

func (s *Service) recordProc(runID, name string) recordFunc {
	return func(ctx context.Context, proc runs.Proc) error {
		_, _, err := s.Ask(ctx, "hook", runs.Request{Op: runs.OpProc, Run: runID, Step: name, Proc: &proc})
		if err != nil {
			return fmt.Errorf("record the op's process in %s: %w", name, err)
		}
		return nil
	}
}

func (s *Service) runRecorded(ctx context.Context, p *plan.Plan, h *plan.Hook, op *plan.Op, timeout time.Duration, env []string, record recordFunc) (Outcome, error) {
	if s.RefuseExec && (h.Type == plan.HookExec || h.Type == plan.HookKubernetes) {
		where := fmt.Sprintf("%s hook %s", h.Type, h.Name)
		for i := range p.Spec.Hooks {
			if p.Spec.Hooks[i].Name == h.Name {
				where = fmt.Sprintf("spec.hooks[%d] (%s)", i, where)
			}
		}
		return Outcome{}, fmt.Errorf("%w: %s", stage.ErrExecRefused, where)
	}
	return runOpRecorded(ctx, p, h, op, timeout, env, record)
}

// runOp runs one op of hook h within timeout; env is added to exec and
// kubernetes ops' environment.
func runOp(ctx context.Context, p *plan.Plan, h *plan.Hook, op *plan.Op, timeout time.Duration, env []string) (Outcome, error) {
	return runOpRecorded(ctx, p, h, op, timeout, env, nil)
}

// runOpRecorded is runOp with record called before the op can take effect:
// an exec (or kubectl) process is held by its supervisor until its group is
// recorded, an sql statement is sent once its session is recorded. http
// ops record nothing: nothing of them can be found again.
func runOpRecorded(ctx context.Context, p *plan.Plan, h *plan.Hook, op *plan.Op, timeout time.Duration, env []string, record recordFunc) (Outcome, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var out Outcome
	var err error
	switch h.Type {
	case plan.HookExec:
		out, err = runExec(ctx, h, op.Command, env, record)
	case plan.HookSQL:
		err = runSQL(ctx, p, op.SQL, timeout, record)
	case plan.HookHTTP:
		out, err = runHTTP(ctx, h, op.HTTP)
	case plan.HookKubernetes:
		out, err = runKubectl(ctx, h, op, env, record)
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

// runExec runs the op's argv, no shell, in its own process group under a
// supervisor (pkg/supervise): a timeout kills the group, so the op's
// children die with it, and so does the death of this process. The group
// is recorded before the op's program starts.
func runExec(ctx context.Context, h *plan.Hook, argv []string, env []string, record recordFunc) (Outcome, error) {
	if len(argv) == 0 {
		return Outcome{}, errors.New("command: empty")
	}
	spec := supervise.Spec{Argv: argv, Env: append(os.Environ(), env...), WaitDelay: 2 * time.Second}
	if h.Exec != nil {
		spec.Dir = h.Exec.Workdir
		for k, ref := range h.Exec.Env {
			v, err := ref.Resolve()
			if err != nil {
				return Outcome{}, fmt.Errorf("env %s: %w", k, err)
			}
			spec.Env = append(spec.Env, k+"="+v)
		}
	}
	// The output is redacted before the tail cuts it, so a secret the op
	// echoes never survives, not even the half of one cut by the tail.
	out := &tail{n: outputTail}
	rw := secret.NewWriter(out)
	spec.Stdout, spec.Stderr = rw, rw
	state, err := supervise.Run(ctx, spec, func(g supervise.Group) error {
		return record.record(ctx, runs.Proc{Host: g.Host, Machine: g.Machine, PGID: g.PGID, PGIDStart: g.Start})
	})
	_ = rw.Close() // a tail's Write never fails
	res := Outcome{Output: out.String()}
	if state != nil {
		code := state.ExitCode()
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
func runKubectl(ctx context.Context, h *plan.Hook, op *plan.Op, env []string, record recordFunc) (Outcome, error) {
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
		if last, err = runExec(ctx, &plan.Hook{Exec: h.Exec}, argv, env, record); err != nil {
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

// sqlLimitSlack is how long after an sql op's timeout its server ends the
// statement by itself: the op's own timeout fires first and reports
// timedOut; the server's limit is for a statement nobody is left to cancel.
const sqlLimitSlack = 2 * time.Second

// runSQL runs a statement on the plan's data service, connecting with the
// source block's settings and credentials, on a session of its own. The
// session (server, id) is recorded before the statement is sent; the
// server is told to end any statement of the session shortly after the
// op's timeout, whoever is left to ask; and when ctx ends (timeout,
// shutdown) the session is killed on the server from a second connection:
// closing the connection alone leaves a statement running until the server
// happens to notice, if ever.
func runSQL(ctx context.Context, p *plan.Plan, stmt string, timeout time.Duration, record recordFunc) error {
	t, err := sqlDSN(p)
	if err != nil {
		return err
	}
	db, err := sql.Open(t.driver, t.dsn)
	if err != nil {
		return fmt.Errorf("sql: open: %w", err)
	}
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("sql: connect: %w", err)
	}
	defer conn.Close()
	proc, err := t.session(ctx, conn, timeout+sqlLimitSlack)
	if err != nil {
		return fmt.Errorf("sql: %w", err)
	}
	if err := record.record(ctx, proc); err != nil {
		return fmt.Errorf("sql: %w: %w", supervise.ErrNotStarted, err)
	}
	var killErr error
	killed := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(killed)
		kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		killErr = t.killSession(kctx, proc)
	})
	_, err = conn.ExecContext(ctx, stmt)
	if !stop() {
		<-killed
	}
	switch {
	case err != nil && killErr != nil:
		return fmt.Errorf("sql: %w (and killing session %d on the server: %v)", err, proc.ConnID, killErr)
	case err != nil:
		return fmt.Errorf("sql: %w", err)
	}
	return nil
}

// sqlTarget is how an sql op reaches its server.
type sqlTarget struct {
	driver, dsn string
	// server names the server in the run record: "mariadb 127.0.0.1:3306",
	// "mariadb unix:/run/mysqld/mysqld.sock", "postgres db:5432".
	server string
}

// session identifies conn's session on the server (runs.Proc) and limits
// each statement it runs to limit, on the server itself.
func (t sqlTarget) session(ctx context.Context, conn *sql.Conn, limit time.Duration) (runs.Proc, error) {
	proc := runs.Proc{Server: t.server}
	if t.driver == "mysql" {
		if err := conn.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&proc.ConnID); err != nil {
			return proc, fmt.Errorf("connection id: %w", err)
		}
		// The server's start tells a connection id reused after a
		// restart apart; unknown (zero) if the status is not readable.
		proc.ConnStart, _ = mariadbStart(ctx, conn)
		// MariaDB only (MySQL has no max_statement_time): without it the
		// session is still killed by the op's timeout or by ensureDead.
		_, _ = conn.ExecContext(ctx, fmt.Sprintf("SET SESSION max_statement_time = %.3f", limit.Seconds()))
		return proc, nil
	}
	if err := conn.QueryRowContext(ctx, "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()").Scan(&proc.ConnID, &proc.ConnStart); err != nil {
		return proc, fmt.Errorf("backend pid: %w", err)
	}
	if _, err := conn.ExecContext(ctx, fmt.Sprintf("SET statement_timeout = %d", limit.Milliseconds())); err != nil {
		return proc, fmt.Errorf("statement_timeout: %w", err)
	}
	// PostgreSQL 14 and later: a statement whose client is gone (the
	// owner died) is cancelled within a second, not when it next writes.
	_, _ = conn.ExecContext(ctx, "SET client_connection_check_interval = 1000")
	return proc, nil
}

// mariadbStart is when the server behind conn started, to the second.
func mariadbStart(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) (time.Time, error) {
	var up int64
	var nowText string
	if err := q.QueryRowContext(ctx, "SELECT VARIABLE_VALUE, UTC_TIMESTAMP(6) FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'UPTIME'").Scan(&up, &nowText); err != nil {
		return time.Time{}, err
	}
	now, err := time.Parse("2006-01-02 15:04:05.999999", nowText)
	if err != nil {
		return time.Time{}, err
	}
	return now.Add(-time.Duration(up) * time.Second).Truncate(time.Second), nil
}

// serverRestartSlack is how far apart two readings of a MariaDB server's
// start may be (uptime counts whole seconds) and still be one start.
const serverRestartSlack = 3 * time.Second

// killSession ends an op's session on its server and waits until it is
// gone: MariaDB KILL CONNECTION, PostgreSQL pg_terminate_backend, from a
// connection of their own with the op's credentials (a user may end its
// own sessions). The whole session goes, not only its current statement:
// an op may be several statements, and its session is discarded anyway.
// A session found gone (or a server restarted since) is nil at once.
func (t sqlTarget) killSession(ctx context.Context, proc runs.Proc) error {
	if proc.ConnID == 0 {
		return errors.New("no session recorded")
	}
	if proc.Server != t.server {
		return fmt.Errorf("the op ran on %s, the plan now reaches %s", proc.Server, t.server)
	}
	db, err := sql.Open(t.driver, t.dsn)
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	var kill, alive string
	args := []any{proc.ConnID}
	if t.driver == "mysql" {
		if !proc.ConnStart.IsZero() {
			start, err := mariadbStart(ctx, db)
			if err != nil {
				return fmt.Errorf("server start: %w", err)
			}
			if d := start.Sub(proc.ConnStart); d > serverRestartSlack || d < -serverRestartSlack {
				return nil // restarted since: the session died with it
			}
		}
		kill = fmt.Sprintf("KILL CONNECTION %d", proc.ConnID)
		alive = "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ?"
		if _, err := db.ExecContext(ctx, kill); err != nil && !isUnknownThread(err) {
			return fmt.Errorf("%s: %w", kill, err)
		}
	} else {
		args = append(args, proc.ConnStart)
		kill = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = $1 AND backend_start = $2"
		alive = "SELECT COUNT(*) FROM pg_stat_activity WHERE pid = $1 AND backend_start = $2"
		if _, err := db.ExecContext(ctx, kill, args...); err != nil {
			return fmt.Errorf("pg_terminate_backend(%d): %w", proc.ConnID, err)
		}
	}
	for {
		var n int
		if err := db.QueryRowContext(ctx, alive, args...).Scan(&n); err != nil {
			return fmt.Errorf("session %d: %w", proc.ConnID, err)
		}
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("session %d still on the server: %w", proc.ConnID, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// isUnknownThread is MariaDB's answer to KILL of a connection that is gone.
func isUnknownThread(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && me.Number == 1094
}

func sqlDSN(p *plan.Plan) (t sqlTarget, err error) {
	switch p.Spec.Source.Type {
	case "mariadb":
		var c mariadb.Config
		if err := p.Spec.Source.Decode(&c); err != nil {
			return t, err
		}
		mc := mysql.NewConfig()
		mc.User = c.User
		if mc.User == "" {
			mc.User = "root"
		}
		if !c.Password.IsZero() {
			if mc.Passwd, err = c.Password.Resolve(); err != nil {
				return t, err
			}
		}
		switch {
		case c.Socket != "":
			mc.Net, mc.Addr = "unix", c.Socket
			t.server = "mariadb unix:" + c.Socket
		default:
			host, port := c.Host, c.Port
			if host == "" {
				host = "127.0.0.1"
			}
			if port == 0 {
				port = 3306
			}
			mc.Net, mc.Addr = "tcp", host+":"+strconv.Itoa(port)
			t.server = "mariadb " + mc.Addr
		}
		mc.Timeout = 10 * time.Second
		// An op may hold several statements (lock, then record it).
		mc.MultiStatements = true
		t.driver, t.dsn = "mysql", mc.FormatDSN()
		return t, nil
	case "postgres":
		var c postgres.Config
		if err := p.Spec.Source.Decode(&c); err != nil {
			return t, err
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
				return t, err
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
		t.driver, t.dsn = "pgx", strings.Join(parts, " ")
		t.server = "postgres " + host + ":" + strconv.Itoa(port)
		return t, nil
	}
	return t, fmt.Errorf("sql hooks need a mariadb or postgres source, not %q", p.Spec.Source.Type)
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
