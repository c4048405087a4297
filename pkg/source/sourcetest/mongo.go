package sourcetest

import (
	"context"
	"crypto/sha256"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// ConnectMongo connects to uri and disconnects when the test ends.
func ConnectMongo(t testing.TB, uri string) *mongo.Client {
	t.Helper()
	c, err := mongo.Connect(options.Client().ApplyURI(uri))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Disconnect(context.Background()) })
	return c
}

// SeedMongo writes two collections into db: "users", n documents of mixed
// types (unicode, binary, arrays, nested documents, dates, 64-bit integers)
// with a unique and a compound index, and "events", one document with a
// generated ObjectID.
func SeedMongo(t testing.TB, c *mongo.Client, db string, n int) {
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
	if _, err := c.Database(db).Collection("events").InsertOne(ctx, bson.D{{Key: "kind", Value: "only one"}}); err != nil {
		t.Fatal(err)
	}
}

// SummarizeMongo fingerprints each collection of db: its count, a digest
// of its documents in _id order, and its index names and keys.
func SummarizeMongo(t testing.TB, c *mongo.Client, db string) Summary {
	t.Helper()
	ctx := context.Background()
	out := Summary{}
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
			if n == "events" { // the generated ObjectID is kept, but compare without it anyway
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
