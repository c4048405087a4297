package sources

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net"
	"sort"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/backstream/backstream/pkg/testenv"
)

func mongoConnect(t *testing.T, uri string) *mongo.Client {
	t.Helper()
	c, err := mongo.Connect(options.Client().ApplyURI(uri))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Disconnect(context.Background()) })
	return c
}

// seedMongo writes two collections: n documents of mixed types (unicode,
// binary, arrays, nested documents, dates, 64-bit integers) with a unique
// and a compound index, and a collection of one document.
func seedMongo(t *testing.T, c *mongo.Client, db string, n int) {
	t.Helper()
	ctx := context.Background()
	users := c.Database(db).Collection("users")
	docs := make([]any, 0, n)
	for i := range n {
		docs = append(docs, bson.D{
			{Key: "_id", Value: i},
			{Key: "email", Value: fmt.Sprintf("u%d@example.org", i)},
			{Key: "name", Value: []string{"Grüße", "日本語", "emoji 🚀"}[i%3]},
			{Key: "bin", Value: bson.Binary{Subtype: 0, Data: []byte{0, byte(i), 0xff, '\'', '\\'}}},
			{Key: "tags", Value: bson.A{"a", i, 1.5}},
			{Key: "nested", Value: bson.D{{Key: "x", Value: int64(i) << 33}, {Key: "ok", Value: i%2 == 0}}},
			{Key: "at", Value: bson.NewDateTimeFromTime(time.Date(2024, 2, 29, 12, 0, 0, 0, time.UTC))},
			{Key: "pad", Value: strings.Repeat("x", 200)},
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
	if _, err := c.Database(db).Collection("settings").InsertOne(ctx, bson.D{{Key: "_id", Value: "global"}, {Key: "v", Value: 1}}); err != nil {
		t.Fatal(err)
	}
}

// mongoSummary fingerprints each collection of db: count, a digest of its
// documents in _id order, and its indexes.
func mongoSummary(t *testing.T, c *mongo.Client, db string) string {
	t.Helper()
	ctx := context.Background()
	names, err := c.Database(db).ListCollectionNames(ctx, bson.D{})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(names)
	var out []string
	for _, n := range names {
		coll := c.Database(db).Collection(n)
		cur, err := coll.Find(ctx, bson.D{}, options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}))
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		count := 0
		for cur.Next(ctx) {
			h.Write(cur.Current)
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
		out = append(out, fmt.Sprintf("%s: count=%d docs=%x indexes=%s", n, count, h.Sum(nil)[:8], strings.Join(idx, ",")))
	}
	return strings.Join(out, "\n")
}

func mongoBlock(addr, db string) string {
	host, port, _ := net.SplitHostPort(addr)
	return fmt.Sprintf("    type: mongodb\n    mongodb:\n      host: %s\n      port: %s\n      databases: [%s]\n      timeout: 5s\n", host, port, db)
}

// TestMongoDB backs up a database of a FerretDB through the pipeline and
// restores it through the restore stage under a new name on the same
// server; a missing database fails the run without a backup.
func TestMongoDB(t *testing.T) {
	f := testenv.FerretDB(t)
	r := newRig(t)
	c := mongoConnect(t, f.URI)
	seedMongo(t, c, "shop", 5000)
	want := mongoSummary(t, c, "shop")

	t.Run("roundtrip", func(t *testing.T) {
		r.apply(t, "mongo-full", mongoBlock(f.Addr, "shop"))
		run := r.backup(t, "mongo-full")
		r.mustSucceed(t, run)
		r.mustHaveBackup(t, run)
		t.Logf("backup %s: %d bytes of archive, %d stored", run.ID, run.Bytes, run.StoredBytes)
		r.restoreStage(t, "mongo-full", run.ID, "shop_restored")
		if got := mongoSummary(t, c, "shop_restored"); got != want {
			t.Fatalf("restored database differs:\nwant %s\ngot  %s", want, got)
		}
	})

	t.Run("unknown database", func(t *testing.T) {
		r.apply(t, "mongo-fail", mongoBlock(f.Addr, "no_such_db"))
		checkFailure(t, r.mustFail(t, r.backup(t, "mongo-fail")), `database "no_such_db": not found`, "", 0)
	})
}
