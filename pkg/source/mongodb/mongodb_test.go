package mongodb_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/backstream/backstream/pkg/secret"
	"github.com/backstream/backstream/pkg/source"
	"github.com/backstream/backstream/pkg/source/mongodb"
	"github.com/backstream/backstream/pkg/source/sourcetest"
	"github.com/backstream/backstream/pkg/testenv"
)

func TestConformance(t *testing.T) {
	f := testenv.FerretDB(t)
	c := sourcetest.ConnectMongo(t, f.URI)
	sourcetest.SeedMongo(t, c, "shop", 3000)
	want := sourcetest.SummarizeMongo(t, c, "shop")
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
				sourcetest.CompareSummaries(t, want, sourcetest.SummarizeMongo(t, c, target))
			}
		},
	})
}

func TestAllDatabasesAndCollectionFilter(t *testing.T) {
	f := testenv.FerretDB(t)
	c := sourcetest.ConnectMongo(t, f.URI)
	sourcetest.SeedMongo(t, c, "a", 50)
	sourcetest.SeedMongo(t, c, "b", 20)
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
	c := sourcetest.ConnectMongo(t, f.URI)
	sourcetest.SeedMongo(t, c, "shop", 100)
	want := sourcetest.SummarizeMongo(t, c, "shop")
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
	sourcetest.CompareSummaries(t, want, sourcetest.SummarizeMongo(t, c, "shop"))
}

func TestBackupFailures(t *testing.T) {
	f := testenv.FerretDB(t)
	c := sourcetest.ConnectMongo(t, f.URI)
	sourcetest.SeedMongo(t, c, "shop", 10)
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
	c := sourcetest.ConnectMongo(t, f.URI)
	sourcetest.SeedMongo(t, c, "shop", 5000)
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
