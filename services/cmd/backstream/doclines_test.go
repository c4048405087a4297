package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// docLine is one backstream command line of the docs.
type docLine struct {
	where string
	line  string
}

// fence is a fenced code block with its info string: every block is
// matched, so that the closing fence of a ```json or ```yaml block is never
// taken for the opening of the next one; only shell blocks are read.
var fence = regexp.MustCompile("(?s)```([a-z]*)\n(.*?)```")

// shellBlock says whether a block's info string holds shell lines.
func shellBlock(info string) bool {
	switch info {
	case "", "sh", "bash", "shell", "console":
		return true
	}
	return false
}

// docLines returns every backstream command line in the code blocks of
// README.md and docs/*.md and in the comments of examples/*.yaml, with
// continuation lines joined and `&&`-chained commands split.
func docLines(t *testing.T) []docLine {
	t.Helper()
	root := filepath.Join("..", "..", "..")
	mds, _ := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	mds = append(mds, filepath.Join(root, "README.md"))
	var out []docLine
	add := func(where, block string) {
		block = strings.ReplaceAll(block, "\\\n", " ")
		for _, l := range strings.Split(block, "\n") {
			for _, part := range strings.Split(l, "&&") {
				part = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(part), "#"))
				if cmd, ok := commandOf(part); ok {
					out = append(out, docLine{where: where, line: cmd})
				}
			}
		}
	}
	for _, f := range mds {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		for _, m := range fence.FindAllStringSubmatchIndex(s, -1) {
			if shellBlock(s[m[2]:m[3]]) {
				add(fmt.Sprintf("%s:%d", filepath.Base(f), strings.Count(s[:m[0]], "\n")+1), s[m[4]:m[5]])
			}
		}
	}
	examples, _ := filepath.Glob(filepath.Join(root, "examples", "*.yaml"))
	for _, f := range examples {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var comments []string
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(strings.TrimSpace(l), "#") {
				comments = append(comments, strings.TrimPrefix(strings.TrimSpace(l), "#"))
			}
		}
		add(filepath.Base(f), strings.Join(comments, "\n"))
	}
	return out
}

var envAssign = regexp.MustCompile(`^[A-Z_][A-Z0-9_]*=\S*\s+`)

// commandOf is the backstream command of a shell line: env assignments
// and a bin/ prefix dropped, cut at a comment, pipe, redirect or `&`.
func commandOf(l string) (string, bool) {
	for envAssign.MatchString(l) {
		l = envAssign.ReplaceAllString(l, "")
	}
	l = strings.TrimPrefix(l, "bin/")
	l = strings.TrimPrefix(l, "./")
	if !strings.HasPrefix(l, "backstream ") {
		return "", false
	}
	for _, cut := range []string{" #", " |", " >", " 2>", " &", ";"} {
		if i := strings.Index(l, cut); i >= 0 {
			l = l[:i]
		}
	}
	return strings.TrimSpace(strings.TrimPrefix(l, "backstream ")), true
}

// words splits a command line like a shell does for plain and quoted
// words (no expansions).
func words(s string) []string {
	var out []string
	var cur strings.Builder
	quote := rune(0)
	in := false
	for _, r := range s {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			cur.WriteRune(r)
		case r == '"' || r == '\'':
			quote, in = r, true
		case r == ' ' || r == '\t':
			if in {
				out = append(out, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteRune(r)
			in = true
		}
	}
	if in {
		out = append(out, cur.String())
	}
	return out
}

// TestEveryCommandLineOfTheDocsParses: every backstream command line in
// the README's and the docs' code blocks and in the examples' comments
// names a command that exists, with flags it knows and (unless it is a
// synopsis with [optional] parts) the arguments it takes. The README test
// (integration/e2e) runs the README's own lines against a fresh serve.
func TestEveryCommandLineOfTheDocsParses(t *testing.T) {
	lines := docLines(t)
	if len(lines) < 30 {
		t.Fatalf("found %d command lines; the docs have more", len(lines))
	}
	for _, d := range lines {
		args := words(d.line)
		root := newRootCmd(io.Discard, io.Discard)
		cmd, rest, err := root.Find(args)
		if err != nil || cmd == root {
			t.Errorf("%s: `backstream %s`: no such command (%v)", d.where, d.line, err)
			continue
		}
		if strings.ContainsAny(d.line, "[]|…") {
			continue // a synopsis or an elided line; the README test checks the command list's flags
		}
		if err := cmd.ParseFlags(rest); err != nil {
			t.Errorf("%s: `backstream %s`: %v", d.where, d.line, err)
			continue
		}
		if cmd.Args != nil {
			if err := cmd.Args(cmd, cmd.Flags().Args()); err != nil {
				t.Errorf("%s: `backstream %s`: %v", d.where, d.line, err)
			}
		}
	}
}
