package plan

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// DecodeError is a plan file that could not be decoded: YAML syntax, a wrong
// type, or an unknown field. It lists every problem the decoder found, each
// with its line where the decoder gave one.
type DecodeError struct {
	File     string
	Problems []Problem
}

// Error lists the problems one per line as file:line: path: message.
func (e *DecodeError) Error() string { return listProblems(e.File, e.Problems) }

var (
	unknownFieldRE = regexp.MustCompile(`^field (\S+) not found in type (\S+)$`)
	lineMsgRE      = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)
)

func decodeError(file string, err error, ix *fieldIndex) *DecodeError {
	var msgs []string
	var te *yaml.TypeError
	if errors.As(err, &te) {
		msgs = te.Errors
	} else {
		msgs = []string{err.Error()}
	}
	de := &DecodeError{File: file}
	for _, m := range msgs {
		p := Problem{Message: strings.TrimPrefix(m, "yaml: ")}
		if sm := lineMsgRE.FindStringSubmatch(m); sm != nil {
			p.Line, _ = strconv.Atoi(sm[1])
			p.Message = sm[2]
		}
		if sm := unknownFieldRE.FindStringSubmatch(p.Message); sm != nil {
			p.Message = fmt.Sprintf("unknown field %q in %s", sm[1], typeNames.Replace(sm[2]))
		} else if p.Line > 0 {
			p.Path, p.Message = ix.describe(p.Line, p.Message)
		}
		de.Problems = append(de.Problems, p)
	}
	return de
}

// ParseAll decodes every YAML document of data as a plan, strictly: an
// unknown field is an error naming its line. name is the file name used in
// messages and kept in Plan.File. Empty documents are skipped. Decoding
// errors of all documents are returned together as one *DecodeError.
func ParseAll(name string, data []byte) ([]*Plan, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var plans []*Plan
	var bad *DecodeError
	var ix *fieldIndex
	for {
		var p *Plan
		err := dec.Decode(&p)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if ix == nil {
				ix = indexDocuments(data)
			}
			de := decodeError(name, err, ix)
			if bad == nil {
				bad = de
			} else {
				bad.Problems = append(bad.Problems, de.Problems...)
			}
			var te *yaml.TypeError
			if !errors.As(err, &te) {
				break // a syntax error stops the parser
			}
			continue
		}
		if p == nil {
			continue
		}
		p.File = name
		plans = append(plans, p)
	}
	if bad != nil {
		return nil, bad
	}
	return plans, nil
}

// indexDocuments indexes the fields of every document of data that parses
// as YAML, for naming the field a decoding message is about. Lines count
// from the start of data, so one index serves every document.
func indexDocuments(data []byte) *fieldIndex {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var docs []*yaml.Node
	for {
		var n yaml.Node
		if err := dec.Decode(&n); err != nil {
			break
		}
		docs = append(docs, &n)
	}
	return newFieldIndex(docs...)
}

// Parse decodes data holding exactly one plan. See ParseAll.
func Parse(name string, data []byte) (*Plan, error) {
	plans, err := ParseAll(name, data)
	if err != nil {
		return nil, err
	}
	if len(plans) != 1 {
		return nil, &DecodeError{File: name, Problems: []Problem{{
			Message: fmt.Sprintf("holds %d plans, want exactly one", len(plans)),
		}}}
	}
	return plans[0], nil
}

// ParseFile reads and decodes a file holding exactly one plan.
func ParseFile(path string) (*Plan, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read plan: %w", err)
	}
	return Parse(path, data)
}

// LoadPath loads the plans of `-f PATH`: every document of a file, or of
// every *.yaml and *.yml file directly in a directory (see LoadDir).
func LoadPath(path string) ([]*Plan, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("load plans: %w", err)
	}
	if fi.IsDir() {
		return LoadDir(path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load plans: %w", err)
	}
	return ParseAll(path, data)
}

// LoadDir loads every *.yaml and *.yml file directly in dir, in name order.
// It reports the decoding errors of all files together, and refuses two
// plans with the same name.
func LoadDir(dir string) ([]*Plan, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("load plans: %w", err)
	}
	var files []string
	for _, e := range entries {
		ext := filepath.Ext(e.Name())
		if !e.IsDir() && (ext == ".yaml" || ext == ".yml") {
			files = append(files, filepath.Join(dir, e.Name()))
		}
	}
	sort.Strings(files)
	var plans []*Plan
	var errs []error
	where := map[string]string{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			errs = append(errs, fmt.Errorf("load plans: %w", err))
			continue
		}
		ps, err := ParseAll(f, data)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, p := range ps {
			if prev, dup := where[p.Name()]; dup && p.Name() != "" {
				errs = append(errs, fmt.Errorf("%s: plan %q is already defined in %s", f, p.Name(), prev))
				continue
			}
			where[p.Name()] = f
			plans = append(plans, p)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return plans, nil
}

// Marshal encodes the plan as JSON for the KV bucket of plans. FromJSON
// reads it back to an equal plan (File aside).
func (p *Plan) Marshal() ([]byte, error) {
	b, err := json.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("marshal plan %s: %w", p.Name(), err)
	}
	return b, nil
}

// FromJSON decodes a plan stored by Marshal. Unknown fields are errors: a
// plan written by a newer version must not lose a setting (say, encryption)
// by being read by an older one.
func FromJSON(data []byte) (*Plan, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var p Plan
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("decode plan json: %w", err)
	}
	return &p, nil
}
