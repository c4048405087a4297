package retention

import (
	"encoding/xml"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/retention"
	"github.com/backstream/backstream/pkg/storage"
)

// ErrNoPolicy means a destination has no retention policy: neither a block
// of its own nor the plan's.
var ErrNoPolicy = errors.New("no retention policy (no block of its own, none in the plan)")

// Lifecycle maps the effective policy of plan's destination dest (its own
// retention block, else the plan's) to lifecycle rules inside that
// destination's key space (retention.LifecycleRules): one rule per cycle,
// on the keys under "<plan>/" tagged retention.CycleTag=<cycle>, which the
// retention stage sets on every verified backup's object and manifest. Ids
// are "backstream-<plan>-<cycle>".
func Lifecycle(p *plan.Plan, dest string) (storage.Lifecycle, error) {
	r := p.Spec.RetentionFor(dest)
	if r == nil {
		return storage.Lifecycle{}, fmt.Errorf("lifecycle of %s, destination %s: %w", p.Name(), dest, ErrNoPolicy)
	}
	if err := r.Validate(); err != nil {
		return storage.Lifecycle{}, fmt.Errorf("lifecycle of %s, destination %s: %w", p.Name(), dest, err)
	}
	var l storage.Lifecycle
	for _, rule := range retention.LifecycleRules(r.Policy) {
		l.Rules = append(l.Rules, storage.LifecycleRule{
			ID:              "backstream-" + p.Name() + "-" + rule.Cycle,
			Prefix:          p.Name() + "/",
			Tags:            map[string]string{retention.CycleTag: rule.Cycle},
			ExpireAfterDays: rule.ExpireAfterDays,
		})
	}
	return l, nil
}

// S3Lifecycle is a bucket lifecycle configuration in the shape AWS S3 takes
// (aws s3api put-bucket-lifecycle-configuration --lifecycle-configuration
// as JSON, PutBucketLifecycleConfiguration as XML) and `mc ilm import`
// reads (minio-go's lifecycle.Configuration has the same JSON names).
type S3Lifecycle struct {
	XMLName xml.Name `json:"-" xml:"http://s3.amazonaws.com/doc/2006-03-01/ LifecycleConfiguration"`
	Rules   []S3Rule `json:"Rules" xml:"Rule"`
}

// S3Rule is one rule of an S3Lifecycle.
type S3Rule struct {
	ID         string       `json:"ID" xml:"ID"`
	Status     string       `json:"Status" xml:"Status"`
	Filter     S3Filter     `json:"Filter" xml:"Filter"`
	Expiration S3Expiration `json:"Expiration" xml:"Expiration"`
}

// S3Filter selects a rule's objects: a prefix and tags, all of them.
type S3Filter struct {
	And S3And `json:"And" xml:"And"`
}

// S3And is the conjunction of a prefix and tags.
type S3And struct {
	Prefix string  `json:"Prefix" xml:"Prefix"`
	Tags   []S3Tag `json:"Tags" xml:"Tag"`
}

// S3Tag is an object tag a rule requires.
type S3Tag struct {
	Key   string `json:"Key" xml:"Key"`
	Value string `json:"Value" xml:"Value"`
}

// S3Expiration deletes objects Days after their creation.
type S3Expiration struct {
	Days int `json:"Days" xml:"Days"`
}

// ToS3 turns rules inside a storage's key space into a bucket
// configuration; bucketPrefix is the storage's own prefix in the bucket
// (an S3 destination's prefix), prepended to every rule's.
func ToS3(l storage.Lifecycle, bucketPrefix string) S3Lifecycle {
	out := S3Lifecycle{Rules: []S3Rule{}}
	for _, r := range l.Rules {
		sr := S3Rule{ID: r.ID, Status: "Enabled", Expiration: S3Expiration{Days: r.ExpireAfterDays}}
		sr.Filter.And.Prefix = bucketPrefix + r.Prefix
		for _, k := range slices.Sorted(maps.Keys(r.Tags)) {
			sr.Filter.And.Tags = append(sr.Filter.And.Tags, S3Tag{Key: k, Value: r.Tags[k]})
		}
		out.Rules = append(out.Rules, sr)
	}
	return out
}

// FromS3 is the inverse of ToS3 for configurations it made.
func FromS3(c S3Lifecycle, bucketPrefix string) storage.Lifecycle {
	var l storage.Lifecycle
	for _, r := range c.Rules {
		lr := storage.LifecycleRule{ID: r.ID, ExpireAfterDays: r.Expiration.Days}
		lr.Prefix = r.Filter.And.Prefix[min(len(bucketPrefix), len(r.Filter.And.Prefix)):]
		for _, t := range r.Filter.And.Tags {
			if lr.Tags == nil {
				lr.Tags = map[string]string{}
			}
			lr.Tags[t.Key] = t.Value
		}
		l.Rules = append(l.Rules, lr)
	}
	return l
}
