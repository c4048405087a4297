package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
)

const dlqUsage = `usage:
  backstream dlq list [-o table|json] [--consumer C] [--plan P]
  backstream dlq show SEQ [-o text|json]
  backstream dlq replay SEQ...
  backstream dlq purge SEQ...`

// dlqCmd reads, replays and purges dead letters (bus.DeadLetters) with
// plain output that needs no terminal.
func dlqCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stderr, dlqUsage)
		return usageError("dlq: want list, show, replay or purge")
	}
	sub := args[0]
	fs := flag.NewFlagSet("dlq "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	natsFlag := addNATSFlags(fs, "NATS URL")
	var output, consumer, planName *string
	switch sub {
	case "list":
		output = fs.String("o", "table", "table or json")
		consumer = fs.String("consumer", "", "only dead letters of this consumer (e.g. snapshot)")
		planName = fs.String("plan", "", "only dead letters of events about this plan")
	case "show":
		output = fs.String("o", "text", "text or json")
	case "replay", "purge":
	default:
		fmt.Fprintln(stderr, dlqUsage)
		return usageError("dlq: unknown subcommand %q: want list, show, replay or purge", sub)
	}
	pos, err := parseInterleaved(fs, args[1:])
	if err != nil {
		return usageError("dlq %s: %v", sub, err)
	}
	var seqs []uint64
	switch {
	case sub == "list" && len(pos) > 0:
		return usageError("dlq list: unexpected argument %q", pos[0])
	case sub == "show" && len(pos) != 1:
		return usageError("dlq show: want one SEQ")
	case (sub == "replay" || sub == "purge") && len(pos) == 0:
		return usageError("dlq %s: want one or more SEQ", sub)
	}
	for _, p := range pos {
		seq, err := strconv.ParseUint(p, 10, 64)
		if err != nil || seq == 0 {
			return usageError("dlq %s: %q is not a dead letter's sequence number (see `backstream dlq list`)", sub, p)
		}
		seqs = append(seqs, seq)
	}
	if plain := map[string]string{"list": "table", "show": "text"}[sub]; output != nil && *output != plain && *output != "json" {
		return usageError("dlq %s: -o %q: want %s or json", sub, *output, plain)
	}

	b, _, err := connect(ctx, natsFlag)
	if err != nil {
		return err
	}
	defer b.Close()
	q := b.DeadLetters()
	switch sub {
	case "list":
		return dlqList(ctx, q, bus.DeadLetterFilter{Consumer: *consumer, Plan: *planName}, *output, stdout)
	case "show":
		return dlqShow(ctx, q, seqs[0], *output, stdout)
	case "replay":
		return dlqReplay(ctx, q, seqs, stdout)
	default:
		return dlqPurge(ctx, q, seqs, stdout)
	}
}

// parseInterleaved parses fs from args whose positional arguments may stand
// before, between and after the flags, and returns them in order.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		for len(args) > 0 && !strings.HasPrefix(args[0], "-") {
			pos = append(pos, args[0])
			args = args[1:]
		}
		if len(args) == 0 {
			return pos, nil
		}
	}
}

func dlqList(ctx context.Context, q *bus.DeadLetters, f bus.DeadLetterFilter, output string, w io.Writer) error {
	list, err := q.List(ctx, f)
	if err != nil {
		return err
	}
	if output == "json" {
		if list == nil {
			list = []bus.DeadLetter{}
		}
		return writeJSON(w, list)
	}
	if len(list) == 0 {
		fmt.Fprintln(w, "no dead letters")
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tTIME\tCONSUMER\tTYPE\tPLAN\tRUN\tSIZE\tREASON")
	for _, dl := range list {
		size := human(int64(dl.Size))
		if dl.Cut {
			size += " (cut)"
		}
		reason := dl.Reason
		if dl.ReplayOf > 0 {
			reason = fmt.Sprintf("(replay of %d) %s", dl.ReplayOf, reason)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", dl.Seq, dl.Time.Local().Format("2006-01-02 15:04:05"),
			cell(dl.Consumer, 32), cell(strings.TrimPrefix(dl.Type, events.TypePrefix), 40), cell(dl.Plan, 63),
			cell(dl.RunID, 26), size, cell(reason, 100))
	}
	return tw.Flush()
}

func dlqShow(ctx context.Context, q *bus.DeadLetters, seq uint64, output string, w io.Writer) error {
	c, err := q.Get(ctx, seq)
	if err != nil {
		return err
	}
	isJSON := !c.Cut && json.Valid(c.Data)
	if output == "json" {
		// The shape of GET /v1/dlq/{seq}.
		out := struct {
			bus.DeadLetter
			Headers map[string][]string `json:"headers"`
			Event   json.RawMessage     `json:"event,omitempty"`
			Data    []byte              `json:"data,omitempty"`
		}{DeadLetter: c.DeadLetter, Headers: c.Header}
		if isJSON {
			out.Event = c.Data
		} else {
			out.Data = c.Data
		}
		return writeJSON(w, out)
	}
	dl := c.DeadLetter
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s\t%s\n", k, v) }
	row("dead letter", fmt.Sprintf("%d (%s %s)", dl.Seq, bus.DeadLetterStream, dl.Time.Local().Format(time.RFC3339)))
	row("consumer", clean(dl.Consumer))
	row("subject", clean(dl.Subject))
	row("event", fmt.Sprintf("%s  id %s", clean(strings.TrimPrefix(dl.Type, events.TypePrefix)), orDash(dl.EventID)))
	row("plan", orDash(dl.Plan))
	row("run", fmt.Sprintf("%s  step %s", orDash(dl.RunID), orDash(dl.Step)))
	row("reason", clean(dl.Reason))
	row("deliveries", strconv.Itoa(dl.Deliveries))
	orig := fmt.Sprintf("%s seq %d, %d bytes, sha256 %s", bus.EventsStream, dl.EventSeq, dl.Size, orDash(dl.SHA256))
	row("original", orig)
	switch {
	case dl.Cut:
		row("replay", fmt.Sprintf("no: the copy keeps only the first %d of %d bytes", len(c.Data), dl.Size))
	case dl.ReplayOf > 0:
		row("replay of", strconv.FormatUint(dl.ReplayOf, 10))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "\nheaders:")
	keys := make([]string, 0, len(c.Header))
	for k := range c.Header {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		for _, v := range c.Header[k] {
			fmt.Fprintf(w, "  %s: %s\n", clean(k), clean(v))
		}
	}
	if isJSON {
		var pretty bytes.Buffer
		if err := json.Indent(&pretty, c.Data, "", "  "); err == nil {
			fmt.Fprintf(w, "\nevent:\n%s\n", clean(pretty.String()))
			return nil
		}
	}
	what := "data (not JSON)"
	if dl.Cut {
		what = fmt.Sprintf("data (the first %d of %d bytes)", len(c.Data), dl.Size)
	}
	data, more := c.Data, ""
	if len(data) > maxShownData {
		data = data[:maxShownData]
		more = fmt.Sprintf("\n… %d more bytes (-o json shows them all)", len(c.Data)-maxShownData)
	}
	fmt.Fprintf(w, "\n%s:\n%s%s\n", what, clean(string(data)), more)
	return nil
}

// maxShownData is how much of a dead letter's data that is not an event
// `dlq show` prints: enough to recognise it, not a screenful of junk.
const maxShownData = 4 << 10

// dlqReplay replays each dead letter in turn and says what became of it.
// Several entries of one event (each consumer that gave up on it made its
// own) are replayed once: a replay reaches every consumer.
func dlqReplay(ctx context.Context, q *bus.DeadLetters, seqs []uint64, w io.Writer) error {
	replayedAs := map[string]uint64{} // event id -> dead letter replayed for it
	failed := 0
	for _, seq := range seqs {
		c, err := q.Get(ctx, seq)
		if err == nil && c.EventID != "" && !c.Cut {
			if first, ok := replayedAs[c.EventID]; ok {
				fmt.Fprintf(w, "dead letter %d: the same event as %d (id %s), replayed once: a replay reaches every consumer\n", seq, first, clean(c.EventID))
				continue
			}
		}
		if err != nil {
			failed++
			fmt.Fprintln(w, clean(err.Error()))
			continue
		}
		r, err := q.Replay(ctx, seq)
		var refused *bus.PublishRefusedError
		if errors.As(err, &refused) {
			err = fmt.Errorf("%w (replay as admin: beside a local serve its admin key is found by itself, elsewhere give the admin user's --nats-nkey, --nats-creds or --nats-user)", err)
		}
		if err != nil {
			failed++
			fmt.Fprintln(w, clean(err.Error()))
			continue
		}
		replayedAs[r.EventID] = seq
		what := fmt.Sprintf("%s of plan %s", strings.TrimPrefix(c.Type, events.TypePrefix), c.Plan)
		if c.RunID != "" {
			what += " (run " + c.RunID + ")"
		}
		if r.Duplicate {
			fmt.Fprintf(w, "dead letter %d: already replayed within the events stream's duplicate window (as %s seq %d): not published again\n", seq, bus.EventsStream, r.EventSeq)
			continue
		}
		fmt.Fprintf(w, "replayed dead letter %d: %s, on %s as %s seq %d (Nats-Msg-Id %s)\n", seq, clean(what), clean(r.Subject), bus.EventsStream, r.EventSeq, clean(r.MsgID))
	}
	if failed > 0 {
		return fmt.Errorf("dlq replay: %d of %d not replayed", failed, len(seqs))
	}
	return nil
}

func dlqPurge(ctx context.Context, q *bus.DeadLetters, seqs []uint64, w io.Writer) error {
	done, err := q.Purge(ctx, seqs...)
	for _, dl := range done {
		what := fmt.Sprintf("%s %s of plan %s", dl.Consumer, strings.TrimPrefix(dl.Type, events.TypePrefix), orDash(dl.Plan))
		if dl.RunID != "" {
			what += " (run " + dl.RunID + ")"
		}
		fmt.Fprintf(w, "purged dead letter %d: %s\n", dl.Seq, clean(what))
	}
	return err
}

// clean makes text from a dead letter safe to print: it was refused, so
// it may carry terminal escapes or invisible characters meant to mislead
// whoever reads it. Each is shown escaped; newlines and tabs stay.
func clean(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\n' || r == '\t' || unicode.IsPrint(r):
			b.WriteRune(r)
		default:
			b.WriteString(strings.Trim(strconv.QuoteRune(r), "'"))
		}
		i += size
	}
	return b.String()
}

// cell is clean text for one table cell: one line, at most n bytes.
func cell(s string, n int) string {
	s = strings.NewReplacer("\n", " ", "\t", " ").Replace(clean(s))
	if s == "" {
		return "-"
	}
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return clean(s)
}
