package mongodb_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/backstream/backstream/pkg/secret"
	"github.com/backstream/backstream/pkg/source"
	"github.com/backstream/backstream/pkg/source/archive"
	"github.com/backstream/backstream/pkg/source/mongodb"
	"github.com/backstream/backstream/pkg/source/sourcetest"
	"github.com/backstream/backstream/pkg/testenv"
)

// TestExtract backs up a FerretDB database and extracts it as mongodump's
// directory layout. There is no mongorestore or bsondump on the machine, so
// the files are checked for what those tools read: each .bson holds exactly
// the server's documents as concatenated valid BSON, each .metadata.json is
// canonical extended JSON with the indexes and options.
func TestExtract(t *testing.T) {
	f := testenv.FerretDB(t)
	c := sourcetest.ConnectMongo(t, f.URI)
	sourcetest.SeedMongo(t, c, "shop", 500)
	t.Setenv("BS_TEST_MONGO_URI", f.URI)
	var buf bytes.Buffer
	s := mongodb.New(mongodb.Config{URI: secret.Ref{Env: "BS_TEST_MONGO_URI"}, Databases: []string{"shop"}})
	if _, err := s.Backup(context.Background(), &buf); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	names, err := mongodb.Plugin().ExtractTo(context.Background(), bytes.NewReader(buf.Bytes()), dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"shop/events.metadata.json", "shop/events.bson", "shop/users.metadata.json", "shop/users.bson"}
	if !slices.Equal(names, want) {
		t.Fatalf("names %q, want %q", names, want)
	}
	for _, coll := range []string{"events", "users"} {
		got := readBSON(t, filepath.Join(dir, "shop", coll+".bson"))
		cur, err := c.Database("shop").Collection(coll).Find(context.Background(), bson.D{})
		if err != nil {
			t.Fatal(err)
		}
		var server []string
		for cur.Next(context.Background()) {
			server = append(server, hex.EncodeToString(cur.Current))
		}
		slices.Sort(server)
		if !slices.Equal(got, server) || len(got) == 0 {
			t.Fatalf("%s.bson holds %d documents, the server %d, or they differ", coll, len(got), len(server))
		}
	}
	js, err := os.ReadFile(filepath.Join(dir, "shop", "users.metadata.json"))
	if err != nil {
		t.Fatal(err)
	}
	var md struct {
		Indexes        []bson.Raw `bson:"indexes"`
		Options        bson.Raw   `bson:"options"`
		CollectionName string     `bson:"collectionName"`
	}
	if err := bson.UnmarshalExtJSON(js, true, &md); err != nil {
		t.Fatalf("users.metadata.json: %v: %s", err, js)
	}
	var idx []string
	for _, ix := range md.Indexes {
		idx = append(idx, ix.Lookup("name").StringValue())
		if ix.Lookup("name").StringValue() == "by_email" && !ix.Lookup("unique").Boolean() {
			t.Errorf("by_email lost unique: %s", ix)
		}
	}
	slices.Sort(idx)
	if !slices.Equal(idx, []string{"_id_", "by_email", "by_name_x"}) || md.CollectionName != "users" || md.Options == nil {
		t.Fatalf("users.metadata.json: %s", js)
	}
}

// readBSON reads a file of concatenated documents, each validated, and
// returns them hex-encoded and sorted.
func readBSON(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for len(b) > 0 {
		if len(b) < 5 {
			t.Fatalf("%s: %d bytes left over", path, len(b))
		}
		n := int(binary.LittleEndian.Uint32(b))
		if n < 5 || n > len(b) {
			t.Fatalf("%s: document length %d with %d bytes left", path, n, len(b))
		}
		if err := bson.Raw(b[:n]).Validate(); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out = append(out, hex.EncodeToString(b[:n]))
		b = b[n:]
	}
	slices.Sort(out)
	return out
}

// handmade builds a stream as Backup writes it, with one collection whose
// name holds a slash.
func handmade(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	aw := archive.NewWriter(&buf)
	doc, _ := bson.Marshal(bson.D{{Key: "_id", Value: 1}, {Key: "v", Value: "x"}})
	for _, e := range []struct{ name, body string }{
		{"databases", "app"},
		{"meta/app/a/b", `{"options": {}, "indexes": [{"v": {"$numberInt": "2"}, "key": {"_id": {"$numberInt": "1"}}, "name": "_id_"}]}`},
		{"data/app/a/b", string(doc) + string(doc)},
	} {
		w, err := aw.Create(e.name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(w, e.body); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if err := aw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestExtractEscapesNames(t *testing.T) {
	dir := t.TempDir()
	names, err := mongodb.Extract(context.Background(), bytes.NewReader(handmade(t)), dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"app/a%2Fb.metadata.json", "app/a%2Fb.bson"}; !slices.Equal(names, want) {
		t.Fatalf("names %q, want %q", names, want)
	}
	if got := readBSON(t, filepath.Join(dir, "app", "a%2Fb.bson")); len(got) != 2 {
		t.Fatalf("%d documents", len(got))
	}
}

// TestExtractCutShort: a stream cut inside a document, or before its end
// record, is ErrCorrupt and leaves nothing, not even the directory of the
// database.
func TestExtractCutShort(t *testing.T) {
	stream := handmade(t)
	for _, cut := range []int{len(stream) - 20, len(stream) - 5, 0} {
		dir := t.TempDir()
		_, err := mongodb.Extract(context.Background(), bytes.NewReader(stream[:cut]), dir)
		if !errors.Is(err, source.ErrCorrupt) {
			t.Fatalf("cut at %d: got %v, want ErrCorrupt", cut, err)
		}
		if got := sourcetest.ListTree(t, dir); len(got) != 0 {
			t.Fatalf("cut at %d: left %v", cut, got)
		}
	}
}
