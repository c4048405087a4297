// Package mongodb is the source plugin for MongoDB and wire-compatible
// servers (FerretDB), written natively on the official Go driver: no
// mongodump is needed. The stream is a package archive with, per
// collection, its options and index definitions (canonical extended JSON)
// and its documents (concatenated BSON, as mongodump's .bson files).
//
// Stream entries, in order:
//
//	databases         the dumped database names, one per line
//	meta/<db>/<coll>  {"options": {...}, "indexes": [...]} in canonical extended JSON
//	data/<db>/<coll>  the documents, each a complete BSON document
package mongodb

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/backstream/backstream/pkg/secret"
	"github.com/backstream/backstream/pkg/source"
	"github.com/backstream/backstream/pkg/source/archive"
)

// Name is the plugin's registry name.
const Name = "mongodb"

// Config is the plan block of a mongodb source: URI, or Host and Port with
// optional User, Password and AuthSource.
type Config struct {
	// URI is a secret because a MongoDB URI usually holds the password.
	URI        secret.Ref `yaml:"uri"`
	Host       string     `yaml:"host"`
	Port       int        `yaml:"port"`
	User       string     `yaml:"user"`
	Password   secret.Ref `yaml:"password"`
	AuthSource string     `yaml:"authSource"`
	// Databases to dump; empty means all but admin, local and config.
	Databases []string `yaml:"databases"`
	// Collections limits the dump to these, as "db.coll" or "coll" (in every
	// dumped database). Empty means all.
	Collections []string `yaml:"collections"`
	// Timeout bounds server selection and connecting (default 15s).
	Timeout time.Duration `yaml:"timeout"`
}

// Validate reports every problem with its field name.
func (c *Config) Validate() error {
	var p source.Problems
	switch {
	case !c.URI.IsZero() && c.Host != "":
		p.Addf("uri", "set uri or host, not both")
	case c.URI.IsZero() && c.Host == "":
		p.Addf("host", "set uri or host")
	}
	if !c.URI.IsZero() {
		if err := c.URI.Validate(); err != nil {
			p.Addf("uri", "%v", err)
		}
		if c.User != "" || !c.Password.IsZero() {
			p.Addf("user", "put credentials into the uri")
		}
	}
	if !c.Password.IsZero() {
		if err := c.Password.Validate(); err != nil {
			p.Addf("password", "%v", err)
		}
	}
	if c.Port < 0 || c.Port > 65535 {
		p.Addf("port", "out of range")
	}
	for i, d := range c.Databases {
		if d == "" || strings.ContainsAny(d, "/\\. \"$\x00") {
			p.Addf(fmt.Sprintf("databases[%d]", i), "bad name %q", d)
		}
	}
	for i, col := range c.Collections {
		if col == "" || strings.HasPrefix(col, ".") || strings.HasSuffix(col, ".") {
			p.Addf(fmt.Sprintf("collections[%d]", i), "bad name %q", col)
		}
	}
	if c.Timeout < 0 {
		p.Addf("timeout", "must be >= 0")
	}
	return p.Err()
}

// Plugin returns the registry entry.
func Plugin() source.Plugin {
	p := source.PluginOf[Config](Name, New)
	p.Extract = Extract
	return p
}

// Source dumps one MongoDB deployment.
type Source struct{ cfg Config }

var _ source.Source = (*Source)(nil)

// New returns a Source for a validated c.
func New(c Config) *Source { return &Source{cfg: c} }

func (s *Source) connect(ctx context.Context) (*mongo.Client, error) {
	c := s.cfg
	o := options.Client()
	if !c.URI.IsZero() {
		uri, err := c.URI.Resolve()
		if err != nil {
			return nil, fmt.Errorf("uri: %w", err)
		}
		o.ApplyURI(uri)
	} else {
		port := c.Port
		if port == 0 {
			port = 27017
		}
		o.SetHosts([]string{net.JoinHostPort(c.Host, strconv.Itoa(port))})
		if c.User != "" {
			cred := options.Credential{Username: c.User, AuthSource: c.AuthSource}
			if !c.Password.IsZero() {
				pw, err := c.Password.Resolve()
				if err != nil {
					return nil, fmt.Errorf("password: %w", err)
				}
				cred.Password = pw
			}
			o.SetAuth(cred)
		}
	}
	timeout := c.Timeout
	if timeout == 0 {
		timeout = 15 * time.Second
	}
	o.SetServerSelectionTimeout(timeout).SetConnectTimeout(timeout)
	client, err := mongo.Connect(o)
	if err != nil {
		return nil, err
	}
	if err := client.Ping(ctx, nil); err != nil {
		_ = client.Disconnect(context.WithoutCancel(ctx))
		return nil, err
	}
	return client, nil
}

var systemDBs = []string{"admin", "local", "config"}

// wanted reports whether the collection db.coll is selected.
func (s *Source) wanted(db, coll string) bool {
	if strings.HasPrefix(coll, "system.") {
		return false
	}
	if len(s.cfg.Collections) == 0 {
		return true
	}
	return slices.Contains(s.cfg.Collections, coll) || slices.Contains(s.cfg.Collections, db+"."+coll)
}

// ErrNotFound is returned by Backup for a configured database that does not exist.
var ErrNotFound = errors.New("not found")

type metadata struct {
	Options bson.Raw   `bson:"options"`
	Indexes []bson.Raw `bson:"indexes"`
}

// Backup streams every selected collection. Each collection is read with
// one cursor; there is no snapshot across collections (FerretDB and
// standalone servers have none), so quiesce writers with a hook when
// cross-collection consistency matters. Views are not dumped.
func (s *Source) Backup(ctx context.Context, w io.Writer) (source.Description, error) {
	client, err := s.connect(ctx)
	if err != nil {
		return nil, &source.Error{Op: "mongodb connect", Err: err}
	}
	defer client.Disconnect(context.WithoutCancel(ctx))
	desc := source.Description{"server": "mongodb"}
	var info struct {
		Version string `bson:"version"`
	}
	if err := client.Database("admin").RunCommand(ctx, bson.D{{Key: "buildInfo", Value: 1}}).Decode(&info); err == nil && info.Version != "" {
		desc["version"] = info.Version
	}
	all, err := client.ListDatabaseNames(ctx, bson.D{})
	if err != nil {
		return nil, &source.Error{Op: "mongodb list databases", Err: err}
	}
	dbs := s.cfg.Databases
	if len(dbs) == 0 {
		for _, d := range all {
			if !slices.Contains(systemDBs, d) {
				dbs = append(dbs, d)
			}
		}
	}
	for _, d := range dbs {
		if !slices.Contains(all, d) {
			return nil, &source.Error{Op: "mongodb backup", Err: fmt.Errorf("database %q: %w", d, ErrNotFound)}
		}
	}
	slices.Sort(dbs)
	desc["databases"] = strings.Join(dbs, ",")
	aw := archive.NewWriter(w)
	if err := writeEntry(aw, "databases", []byte(strings.Join(dbs, "\n"))); err != nil {
		return nil, fmt.Errorf("mongodb backup: %w", err)
	}
	var ncoll, ndocs int
	for _, d := range dbs {
		specs, err := client.Database(d).ListCollectionSpecifications(ctx, bson.D{})
		if err != nil {
			return nil, &source.Error{Op: "mongodb list collections " + d, Err: err}
		}
		slices.SortFunc(specs, func(a, b mongo.CollectionSpecification) int { return strings.Compare(a.Name, b.Name) })
		for _, spec := range specs {
			if spec.Type == "view" || !s.wanted(d, spec.Name) {
				continue
			}
			n, err := dumpCollection(ctx, aw, client.Database(d).Collection(spec.Name), d, spec)
			if err != nil {
				return nil, &source.Error{Op: "mongodb dump " + d + "." + spec.Name, Err: err}
			}
			ncoll++
			ndocs += n
		}
	}
	if err := aw.Close(); err != nil {
		return nil, fmt.Errorf("mongodb backup: %w", err)
	}
	desc["collections"] = strconv.Itoa(ncoll)
	desc["documents"] = strconv.Itoa(ndocs)
	return desc, nil
}

func writeEntry(aw *archive.Writer, name string, b []byte) error {
	ew, err := aw.Create(name)
	if err != nil {
		return err
	}
	if _, err := ew.Write(b); err != nil {
		return err
	}
	return ew.Close()
}

func dumpCollection(ctx context.Context, aw *archive.Writer, coll *mongo.Collection, db string, spec mongo.CollectionSpecification) (int, error) {
	cur, err := coll.Indexes().List(ctx)
	if err != nil {
		return 0, fmt.Errorf("list indexes: %w", err)
	}
	md := metadata{Options: spec.Options}
	for cur.Next(ctx) {
		md.Indexes = append(md.Indexes, slices.Clone(cur.Current))
	}
	if err := cur.Err(); err != nil {
		return 0, fmt.Errorf("list indexes: %w", err)
	}
	cur.Close(ctx)
	if md.Options == nil {
		md.Options = bson.Raw{5, 0, 0, 0, 0}
	}
	js, err := bson.MarshalExtJSON(md, true, false)
	if err != nil {
		return 0, fmt.Errorf("metadata: %w", err)
	}
	if err := writeEntry(aw, "meta/"+db+"/"+spec.Name, js); err != nil {
		return 0, err
	}
	ew, err := aw.Create("data/" + db + "/" + spec.Name)
	if err != nil {
		return 0, err
	}
	docs, err := coll.Find(ctx, bson.D{})
	if err != nil {
		return 0, fmt.Errorf("find: %w", err)
	}
	defer docs.Close(context.WithoutCancel(ctx))
	n := 0
	for docs.Next(ctx) {
		if _, err := ew.Write(docs.Current); err != nil {
			return n, err
		}
		n++
	}
	if err := docs.Err(); err != nil {
		return n, fmt.Errorf("find: %w", err)
	}
	return n, ew.Close()
}

// Restore reads the stream and recreates each collection: it creates the
// collection with its options, inserts the documents in batches and then
// builds the indexes. o.Target renames a single-database backup (more
// databases are ErrUnsupported, refused before anything changes); o.Clean
// drops each restored collection first; without it, documents whose _id
// exists make the restore fail. o.Create is implied: MongoDB creates
// databases on first write.
func (s *Source) Restore(ctx context.Context, r io.Reader, o source.RestoreOptions) error {
	client, err := s.connect(ctx)
	if err != nil {
		return &source.Error{Op: "mongodb connect", Err: err}
	}
	defer client.Disconnect(context.WithoutCancel(ctx))
	ar := archive.NewReader(r)
	pending := map[string]metadata{}
	for {
		name, err := ar.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("mongodb restore: %w: %w", source.ErrCorrupt, err)
		}
		kind, rest, _ := strings.Cut(name, "/")
		db, coll, _ := strings.Cut(rest, "/")
		if kind != "databases" && (db == "" || coll == "") {
			return fmt.Errorf("mongodb restore: entry %q: %w", name, source.ErrCorrupt)
		}
		if o.Target != "" {
			db = o.Target
		}
		switch kind {
		case "databases":
			b, err := io.ReadAll(io.LimitReader(ar, 1<<20))
			if err != nil {
				return fmt.Errorf("mongodb restore: %w: %w", source.ErrCorrupt, err)
			}
			if n := len(strings.Split(string(b), "\n")); o.Target != "" && n != 1 {
				return fmt.Errorf("mongodb restore: target needs a single-database backup, this has %d: %w", n, source.ErrUnsupported)
			}
		case "meta":
			b, err := io.ReadAll(io.LimitReader(ar, 64<<20))
			if err != nil {
				return fmt.Errorf("mongodb restore: %w: %w", source.ErrCorrupt, err)
			}
			var md metadata
			if err := bson.UnmarshalExtJSON(b, true, &md); err != nil {
				return fmt.Errorf("mongodb restore %s: metadata: %w", name, err)
			}
			if err := createCollection(ctx, client.Database(db), coll, md.Options, o.Clean); err != nil {
				return &source.Error{Op: "mongodb create " + db + "." + coll, Err: err}
			}
			pending[db+"."+coll] = md
		case "data":
			c := client.Database(db).Collection(coll)
			if err := insertAll(ctx, c, ar); err != nil {
				return &source.Error{Op: "mongodb insert " + db + "." + coll, Err: err}
			}
			if md, ok := pending[db+"."+coll]; ok {
				if err := createIndexes(ctx, client.Database(db), coll, md.Indexes); err != nil {
					return &source.Error{Op: "mongodb create indexes " + db + "." + coll, Err: err}
				}
				delete(pending, db+"."+coll)
			}
		default:
			return fmt.Errorf("mongodb restore: entry %q: %w", name, source.ErrCorrupt)
		}
	}
	return nil
}

func createCollection(ctx context.Context, db *mongo.Database, coll string, opts bson.Raw, clean bool) error {
	if clean {
		if err := db.Collection(coll).Drop(ctx); err != nil {
			return err
		}
	}
	cmd := bson.D{{Key: "create", Value: coll}}
	elems, err := opts.Elements()
	if err != nil {
		return err
	}
	for _, e := range elems {
		cmd = append(cmd, bson.E{Key: e.Key(), Value: e.Value()})
	}
	err = db.RunCommand(ctx, cmd).Err()
	var ce mongo.CommandError
	if errors.As(err, &ce) && ce.Code == 48 { // NamespaceExists: restore into it
		return nil
	}
	return err
}

func createIndexes(ctx context.Context, db *mongo.Database, coll string, specs []bson.Raw) error {
	var idx bson.A
	for _, spec := range specs {
		elems, err := spec.Elements()
		if err != nil {
			return err
		}
		var d bson.D
		for _, e := range elems {
			if e.Key() == "v" || e.Key() == "ns" {
				continue
			}
			d = append(d, bson.E{Key: e.Key(), Value: e.Value()})
		}
		if name, _ := spec.Lookup("name").StringValueOK(); name == "_id_" {
			continue
		}
		idx = append(idx, d)
	}
	if len(idx) == 0 {
		return nil
	}
	return db.RunCommand(ctx, bson.D{{Key: "createIndexes", Value: coll}, {Key: "indexes", Value: idx}}).Err()
}

// maxDoc bounds one document: MongoDB's 16 MiB plus headroom.
const maxDoc = 16<<20 + 16<<10

func insertAll(ctx context.Context, c *mongo.Collection, r io.Reader) error {
	const batchBytes = 8 << 20
	var batch []any
	size := 0
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		_, err := c.InsertMany(ctx, batch)
		batch, size = batch[:0], 0
		return err
	}
	var l [4]byte
	for {
		if _, err := io.ReadFull(r, l[:]); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return fmt.Errorf("%w: %w", source.ErrCorrupt, err)
		}
		n := int(binary.LittleEndian.Uint32(l[:]))
		if n < 5 || n > maxDoc {
			return fmt.Errorf("%w: document length %d", source.ErrCorrupt, n)
		}
		doc := make([]byte, n)
		copy(doc, l[:])
		if _, err := io.ReadFull(r, doc[4:]); err != nil {
			return fmt.Errorf("%w: %w", source.ErrCorrupt, err)
		}
		if err := bson.Raw(doc).Validate(); err != nil {
			return fmt.Errorf("%w: %w", source.ErrCorrupt, err)
		}
		batch = append(batch, bson.Raw(doc))
		size += n
		if size >= batchBytes || len(batch) >= 1000 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}
