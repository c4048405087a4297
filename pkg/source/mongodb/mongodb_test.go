package mongodb_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/backstream/backstream/pkg/secret"
	"github.com/backstream/backstream/pkg/source"
	"github.com/backstream/backstream/pkg/source/mongodb"
	"github.com/backstream/backstream/pkg/source/sourcetest"
	"github.com/backstream/backstream/pkg/testenv"
)

func connect(t *testing.T, uri string) *mongo.Client {
	t.Helper()
	c, err := mongo.Connect(options.Client().ApplyURI(uri))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Disconnect(context.Background()) })
	return c
}

// seed writes two collections with indexes and n documents of mixed types.
func seed(t *testing.T, c *mongo.Client, db string, n int) {
	t.Helper()
	ctx := context.Background()
	users := c.Database(db).Collection("users")
	var docs []any
	for i := range n {
		docs = append(docs, bson.D{
			{Key: "_id", Value: i},
			{Key: "email", Value: fmt.Sprintf("u%d@example.org", i)},
			{Key: "name", Value: []string{"Grüße", "日本語", "emoji 🚀"}[i%3]},
			{Key: "bin", Value: bson.Binary{Subtype: 0, Data: []byte{0, byte(i), 0xff}}},
			{Key: "tags", Value: bson.A{"a", i, 1.5}},
			{Key: "nested", Value: bson.D{{Key: "x", Value: int64(i) << 33}, {Key: "ok", Value: i%2 == 0}}},
			{Key: "at", Value: bson.NewDateTimeFromTime(time.Date(2024, 2, 29, 12, 0, 0, 0, time.UTC))},
		})
	}
	if _, err := users.InsertMany(ctx, docs); err != nil {
		t.Fatal(err)
	}
	if _, err := users.Indexes().CreateMany(ctx, []mongo.IndexModel{
		{Keys: bson.D{{Key: "email", Value: 1}}, Options: options.Index().SetUnique(true).SetName("by_email")},
		{Keys: bson.D{{Key: "name", Value: 1}, {Key: "nested.x", Value: -1}}, Options: options.Index().SetName("by_name_x")},
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Database(db).Collection("events").InsertOne(ctx, bson.D{{Key: "kind", Value: "only one"}}); err != nil {
		t.Fatal(err)
	}
}

// summary fingerprints each collection: count, a digest of its documents
// in _id order, and its index names and keys.
func summary(t *testing.T, c *mongo.Client, db string) map[string]string {
	t.Helper()
	ctx := context.Background()
	out := map[string]string{}
	names, err := c.Database(db).ListCollectionNames(ctx, bson.D{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		coll := c.Database(db).Collection(n)
		cur, err := coll.Find(ctx, bson.D{}, options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}))
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		count := 0
		for cur.Next(ctx) {
			d := cur.Current
			if n == "events" { // generated ObjectID is kept as is, but compare without it anyway
				d, _ = bson.Marshal(bson.D{{Key: "kind", Value: d.Lookup("kind").StringValue()}})
			}
			h.Write(d)
			count++
		}
		if err := cur.Err(); err != nil {
			t.Fatal(err)
		}
		var idx []string
		ic, err := coll.Indexes().List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for ic.Next(ctx) {
			idx = append(idx, ic.Current.Lookup("name").StringValue()+"="+ic.Current.Lookup("key").String()+fmt.Sprint(ic.Current.Lookup("unique")))
		}
		sort.Strings(idx)
		out[n] = fmt.Sprintf("count=%d docs=%x indexes=%s", count, h.Sum(nil)[:8], strings.Join(idx, ","))
	}
	return out
}

func compare(t *testing.T, want, got map[string]string) {
	t.Helper()
	if fmt.Sprint(want) != fmt.Sprint(got) {
		t.Fatalf("restored database differs:\nwant %v\ngot  %v", want, got)
	}
}

func TestConformance(t *testing.T) {
	f := testenv.FerretDB(t)
	c := connect(t, f.URI)
	seed(t, c, "shop", 3000)
	want := summary(t, c, "shop")
	if !strings.Contains(want["users"], "count=3000") || !strings.Contains(want["users"], "by_name_x") || len(want) != 2 {
		t.Fatalf("seed summary incomplete: %v", want)
	}
	t.Setenv("BS_TEST_MONGO_URI", f.URI)
	s := mongodb.New(mongodb.Config{URI: secret.Ref{Env: "BS_TEST_MONGO_URI"}, Databases: []string{"shop"}})
	n := 0
	sourcetest.Run(t, sourcetest.Case{
		Source:            s,
		DetectsTruncation: true,
		Fresh: func(t *testing.T) (source.Source, source.RestoreOptions, func(t *testing.T)) {
			n++
			target := fmt.Sprintf("restored%d", n)
			return s, source.RestoreOptions{Target: target}, func(t *testing.T) {
				compare(t, want, summary(t, c, target))
			}
		},
	})
}

func TestAllDatabasesAndCollectionFilter(t *testing.T) {
	f := testenv.FerretDB(t)
	c := connect(t, f.URI)
	seed(t, c, "a", 50)
	seed(t, c, "b", 20)
	tests := []struct {
		name        string
		collections []string
		wantDBs     string
		wantColls   string
	}{
		{"all", nil, "a,b", "4"},
		{"qualified and bare names", []string{"a.users", "events"}, "a,b", "3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := mongodb.New(mongodb.Config{Host: "127.0.0.1", Port: portOf(f.Addr), Collections: tt.collections})
			desc, err := s.Backup(context.Background(), &bytes.Buffer{})
			if err != nil {
				t.Fatal(err)
			}
			if desc["databases"] != tt.wantDBs || desc["collections"] != tt.wantColls {
				t.Fatalf("description %v", desc)
			}
		})
	}
}

func portOf(addr string) int {
	var p int
	fmt.Sscanf(addr[strings.LastIndexByte(addr, ':')+1:], "%d", &p)
	return p
}

func TestRestoreClean(t *testing.T) {
	f := testenv.FerretDB(t)
	c := connect(t, f.URI)
	seed(t, c, "shop", 100)
	want := summary(t, c, "shop")
	s := mongodb.New(mongodb.Config{Host: "127.0.0.1", Port: portOf(f.Addr), Databases: []string{"shop"}})
	var buf bytes.Buffer
	if _, err := s.Backup(context.Background(), &buf); err != nil {
		t.Fatal(err)
	}
	// Over the live data without clean: duplicate _id values fail.
	if err := s.Restore(context.Background(), bytes.NewReader(buf.Bytes()), source.RestoreOptions{}); err == nil {
		t.Fatal("restore over existing documents without clean returned nil")
	}
	if err := s.Restore(context.Background(), bytes.NewReader(buf.Bytes()), source.RestoreOptions{Clean: true}); err != nil {
		t.Fatal(err)
	}
	compare(t, want, summary(t, c, "shop"))
}

func TestBackupFailures(t *testing.T) {
	f := testenv.FerretDB(t)
	c := connect(t, f.URI)
	seed(t, c, "shop", 10)
	tests := []struct {
		name string
		cfg  mongodb.Config
		want error
	}{
		{"unknown database", mongodb.Config{Host: "127.0.0.1", Port: portOf(f.Addr), Databases: []string{"nope"}}, mongodb.ErrNotFound},
		{"server unreachable", mongodb.Config{Host: "127.0.0.1", Port: testenv.FreePort(t), Timeout: time.Second}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := mongodb.New(tt.cfg).Backup(context.Background(), &bytes.Buffer{})
			var se *source.Error
			if !errors.As(err, &se) {
				t.Fatalf("got %v, want *source.Error", err)
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

// TestServerKilledMidDump kills FerretDB once the first bytes went out.
func TestServerKilledMidDump(t *testing.T) {
	f := testenv.FerretDB(t)
	c := connect(t, f.URI)
	seed(t, c, "shop", 5000)
	s := mongodb.New(mongodb.Config{Host: "127.0.0.1", Port: portOf(f.Addr), Timeout: 2 * time.Second})
	var buf bytes.Buffer
	if _, err := s.Backup(context.Background(), &sourcetest.CallbackAfter{W: &buf, F: f.Kill}); err == nil {
		t.Fatalf("backup of a killed server returned nil after %d bytes", buf.Len())
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct{ name, give, want string }{
		{"uri", "uri: {env: MONGO_URI}\ndatabases: [shop]\ncollections: [shop.users]", ""},
		{"host", "host: db\nport: 27017\nuser: u\npassword: {file: /p}", ""},
		{"neither", "databases: [a]", "host: set uri or host"},
		{"both", "uri: {env: U}\nhost: db", "uri: set uri or host"},
		{"bad db", "host: db\ndatabases: [a.b]", "databases[0]: bad name"},
		{"unknown field", "host: db\ndb: x", "field db not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := mongodb.Plugin().Check(source.YAMLDecoder([]byte(tt.give)))
			if (tt.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
		})
	}
}
