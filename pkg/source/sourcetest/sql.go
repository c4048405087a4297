package sourcetest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"fmt"
	"sort"
	"strings"
	"testing"
)

// unicode text that must survive a dump: multi-byte, emoji, quotes, NUL-free.
var texts = []string{"plain ascii", "Grüße aus Köln", "日本語のテキスト", "emoji 🚀🔥", `quotes ' " \ and ; semicolons`, "line\nbreaks\tand tabs"}

// SeedMariaDB fills db (an empty database) with a non-trivial schema: three
// tables with primary, secondary and unique indexes and a foreign key, binary
// and unicode data, a view, a stored function, a procedure and a trigger;
// about size bytes of row data. Tests keep size small (1–5 MB); end-to-end
// tests use >= 50 MB.
func SeedMariaDB(t testing.TB, ctx context.Context, db *sql.DB, size int) {
	t.Helper()
	exec := func(q string, args ...any) {
		t.Helper()
		if _, err := db.ExecContext(ctx, q, args...); err != nil {
			t.Fatalf("seed mariadb: %s: %v", firstLine(q), err)
		}
	}
	exec(`CREATE TABLE customers (
		id INT PRIMARY KEY, name VARCHAR(200) CHARACTER SET utf8mb4 NOT NULL,
		email VARCHAR(200) NOT NULL UNIQUE, created DATETIME(6) NOT NULL) ENGINE=InnoDB`)
	exec(`CREATE TABLE orders (
		id BIGINT PRIMARY KEY, customer_id INT NOT NULL, amount DECIMAL(12,2) NOT NULL,
		note TEXT CHARACTER SET utf8mb4, KEY by_customer (customer_id),
		FOREIGN KEY (customer_id) REFERENCES customers(id)) ENGINE=InnoDB`)
	exec(`CREATE TABLE blobs (id INT PRIMARY KEY, data LONGBLOB NOT NULL) ENGINE=InnoDB`)
	exec(`CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, order_id BIGINT NOT NULL) ENGINE=InnoDB`)
	exec(`CREATE VIEW order_totals AS SELECT customer_id, COUNT(*) AS n, SUM(amount) AS total FROM orders GROUP BY customer_id`)
	exec(`CREATE FUNCTION add_tax(x DECIMAL(12,2)) RETURNS DECIMAL(12,2) DETERMINISTIC RETURN x * 1.19`)
	exec(`CREATE PROCEDURE count_orders(IN c INT, OUT n INT) BEGIN SELECT COUNT(*) INTO n FROM orders WHERE customer_id = c; END`)
	exec(`CREATE TRIGGER orders_audit AFTER INSERT ON orders FOR EACH ROW INSERT INTO audit (order_id) VALUES (NEW.id)`)
	seedRows(t, ctx, db, size, "?", func(q string, args ...any) { exec(q, args...) })
}

// SeedPostgres is SeedMariaDB for PostgreSQL: tables with indexes and a
// foreign key, bytea, jsonb and unicode text, a view, a plpgsql function, a
// sequence-backed identity column and a trigger.
func SeedPostgres(t testing.TB, ctx context.Context, db *sql.DB, size int) {
	t.Helper()
	exec := func(q string, args ...any) {
		t.Helper()
		if _, err := db.ExecContext(ctx, q, args...); err != nil {
			t.Fatalf("seed postgres: %s: %v", firstLine(q), err)
		}
	}
	exec(`CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, email text NOT NULL UNIQUE, created timestamptz NOT NULL)`)
	exec(`CREATE TABLE orders (id bigint PRIMARY KEY, customer_id int NOT NULL REFERENCES customers(id), amount numeric(12,2) NOT NULL, note text)`)
	exec(`CREATE INDEX orders_by_customer ON orders (customer_id)`)
	exec(`CREATE TABLE blobs (id int PRIMARY KEY, data bytea NOT NULL)`)
	exec(`CREATE TABLE audit (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, order_id bigint NOT NULL, meta jsonb)`)
	exec(`CREATE VIEW order_totals AS SELECT customer_id, count(*) AS n, sum(amount) AS total FROM orders GROUP BY customer_id`)
	exec(`CREATE FUNCTION add_tax(x numeric) RETURNS numeric LANGUAGE sql IMMUTABLE AS 'SELECT x * 1.19'`)
	exec(`CREATE FUNCTION audit_order() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN INSERT INTO audit (order_id, meta) VALUES (NEW.id, jsonb_build_object('amount', NEW.amount)); RETURN NEW; END $$`)
	exec(`CREATE TRIGGER orders_audit AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION audit_order()`)
	seedRows(t, ctx, db, size, "$", func(q string, args ...any) { exec(q, args...) })
}

func firstLine(q string) string {
	q = strings.TrimSpace(q)
	if i := strings.IndexByte(q, '\n'); i > 0 {
		q = q[:i]
	}
	return q
}

// seedRows writes about size bytes: half random blobs of 64 KiB, half order
// rows of ~250 bytes, in multi-row inserts. ph is "?" or "$" (numbered).
func seedRows(t testing.TB, ctx context.Context, db *sql.DB, size int, ph string, exec func(string, ...any)) {
	t.Helper()
	placeholders := func(rows, cols int) string {
		var b strings.Builder
		n := 0
		for r := range rows {
			if r > 0 {
				b.WriteString(",")
			}
			b.WriteString("(")
			for c := range cols {
				if c > 0 {
					b.WriteString(",")
				}
				n++
				if ph == "$" {
					fmt.Fprintf(&b, "$%d", n)
				} else {
					b.WriteString("?")
				}
			}
			b.WriteString(")")
		}
		return b.String()
	}
	const customers = 100
	var args []any
	for i := range customers {
		args = append(args, i, fmt.Sprintf("%s #%d", texts[i%len(texts)], i), fmt.Sprintf("c%d@example.org", i), "2024-02-29 12:34:56.789")
	}
	exec("INSERT INTO customers (id, name, email, created) VALUES "+placeholders(customers, 4), args...)

	blobBytes := max(size/2, 64<<10)
	for i := 0; i*(64<<10) < blobBytes; i++ {
		b := make([]byte, 64<<10)
		_, _ = rand.Read(b)
		b[0], b[1], b[2] = 0, '\'', '\\' // bytes that need escaping
		exec("INSERT INTO blobs (id, data) VALUES "+placeholders(1, 2), i, b)
	}
	orders := max(size/2/250, 100)
	const batch = 500
	for start := 0; start < orders; start += batch {
		n := min(batch, orders-start)
		args = args[:0]
		for i := start; i < start+n; i++ {
			note := strings.Repeat(texts[i%len(texts)]+" ", 200/len(texts[i%len(texts)])+1)
			args = append(args, i, i%customers, fmt.Sprintf("%d.%02d", i%10000, i%100), note)
		}
		exec("INSERT INTO orders (id, customer_id, amount, note) VALUES "+placeholders(n, 4), args...)
	}
}

// Summary maps each table, view and routine of a database to a fingerprint
// (row count and checksum, or the routine's existence); two databases with
// the same data have equal summaries.
type Summary map[string]string

// SummarizeMariaDB fingerprints every base table (COUNT and CHECKSUM TABLE),
// view (row count) and routine and trigger (name) of db's current database.
func SummarizeMariaDB(t testing.TB, ctx context.Context, db *sql.DB) Summary {
	t.Helper()
	s := Summary{}
	rows := queryStrings(t, ctx, db, `SELECT CONCAT(TABLE_TYPE, ' ', TABLE_NAME) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()`)
	for _, r := range rows {
		if name, ok := strings.CutPrefix(r, "BASE TABLE "); ok {
			count := queryStrings(t, ctx, db, "SELECT COUNT(*) FROM `"+name+"`")[0]
			var tbl string
			var sum sql.NullInt64
			if err := db.QueryRowContext(ctx, "CHECKSUM TABLE `"+name+"`").Scan(&tbl, &sum); err != nil {
				t.Fatalf("checksum %s: %v", name, err)
			}
			s["table "+name] = fmt.Sprintf("rows=%s checksum=%d", count, sum.Int64)
			continue
		}
		name := strings.TrimPrefix(r, "VIEW ")
		s["view "+name] = "rows=" + queryStrings(t, ctx, db, "SELECT COUNT(*) FROM `"+name+"`")[0]
	}
	for _, r := range queryStrings(t, ctx, db, `SELECT CONCAT(ROUTINE_TYPE, ' ', ROUTINE_NAME) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = DATABASE()`) {
		s[strings.ToLower(r)] = "present"
	}
	for _, r := range queryStrings(t, ctx, db, `SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()`) {
		s["trigger "+r] = "present"
	}
	return s
}

// SummarizePostgres fingerprints every table (count and md5 over rows in
// primary key order), view (row count), function and trigger of db's public schema.
func SummarizePostgres(t testing.TB, ctx context.Context, db *sql.DB) Summary {
	t.Helper()
	s := Summary{}
	for _, r := range queryStrings(t, ctx, db, `SELECT table_type || ' ' || table_name FROM information_schema.tables WHERE table_schema = 'public'`) {
		if name, ok := strings.CutPrefix(r, "BASE TABLE "); ok {
			fp := queryStrings(t, ctx, db, fmt.Sprintf(`SELECT count(*) || ' ' || coalesce(md5(string_agg(md5(t::text), '' ORDER BY t.id)), '') FROM %q t`, name))[0]
			s["table "+name] = fp
			continue
		}
		name := strings.TrimPrefix(r, "VIEW ")
		s["view "+name] = queryStrings(t, ctx, db, fmt.Sprintf(`SELECT count(*)::text FROM %q`, name))[0]
	}
	for _, r := range queryStrings(t, ctx, db, `SELECT routine_type || ' ' || routine_name FROM information_schema.routines WHERE routine_schema = 'public'`) {
		s[strings.ToLower(r)] = "present"
	}
	for _, r := range queryStrings(t, ctx, db, `SELECT DISTINCT trigger_name FROM information_schema.triggers WHERE trigger_schema = 'public'`) {
		s["trigger "+r] = "present"
	}
	return s
}

func queryStrings(t testing.TB, ctx context.Context, db *sql.DB, q string, args ...any) []string {
	t.Helper()
	rows, err := db.QueryContext(ctx, q, args...)
	if err != nil {
		t.Fatalf("query %s: %v", q, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s sql.NullString
		if err := rows.Scan(&s); err != nil {
			t.Fatalf("query %s: %v", q, err)
		}
		out = append(out, s.String)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("query %s: %v", q, err)
	}
	return out
}

// CompareSummaries fails t listing every difference between want and got.
func CompareSummaries(t testing.TB, want, got Summary) {
	t.Helper()
	keys := map[string]bool{}
	for k := range want {
		keys[k] = true
	}
	for k := range got {
		keys[k] = true
	}
	var diffs []string
	for k := range keys {
		if want[k] != got[k] {
			diffs = append(diffs, fmt.Sprintf("%s: want %q, got %q", k, want[k], got[k]))
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		t.Fatalf("restored database differs:\n%s", strings.Join(diffs, "\n"))
	}
	if len(want) == 0 {
		t.Fatal("empty summary: nothing was compared")
	}
}
