package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
)

// newDLQCmd reads, replays and purges dead letters (bus.DeadLetters) with
// plain output that needs no terminal.
func newDLQCmd() *cobra.Command {
	list := &cobra.Command{
		Use:   "list [--consumer C] [--plan P] [--limit N] [--after SEQ]",
		Short: "List the dead letters, oldest first",
		Long: `Lists dead letters oldest first, at most --limit of them (default 50, at most
1000). When the page is full, a line on stderr says how to list the next one
(--after the last SEQ shown).`,
		Example: "  backstream dlq list\n  backstream dlq list --consumer snapshot -o json\n  backstream dlq list --limit 200 --after 1042",
		Args:    exactArgs(),
	}
	listNATS := addNATSFlags(list.Flags(), "NATS URL")
	listOut := addOutputFlag(list.Flags(), "table", "table", "json", "yaml")
	consumer := list.Flags().String("consumer", "", "only dead letters of this consumer (e.g. snapshot)")
	planName := list.Flags().String("plan", "", "only dead letters of events about this plan")
	limit := list.Flags().Int("limit", defaultPage, fmt.Sprintf("most dead letters to list (1 to %d)", bus.MaxDeadLetterLimit))
	after := list.Flags().Uint64("after", 0, "only dead letters after this SEQ (the last one of the previous listing)")
	list.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := checkPageLimit(*limit, bus.MaxDeadLetterLimit); err != nil {
			return err
		}
		f := bus.DeadLetterFilter{Consumer: *consumer, Plan: *planName, Limit: *limit, After: *after}
		return withDeadLetters(cmd, listNATS, func(q *bus.DeadLetters) error {
			return dlqList(cmd.Context(), q, f, listOut, cmd.OutOrStdout(), cmd.ErrOrStderr())
		})
	}

	show := &cobra.Command{
		Use:     "show SEQ",
		Short:   "Show one dead letter: why, its headers and its event",
		Example: "  backstream dlq show 12\n  backstream dlq show 12 -o json",
		Args:    exactArgs("SEQ"),
	}
	showNATS := addNATSFlags(show.Flags(), "NATS URL")
	// text is the name this output had before -o table.
	showOut := addOutputFlag(show.Flags(), "table", "table", "text", "json", "yaml")
	show.RunE = func(cmd *cobra.Command, args []string) error {
		seqs, err := parseSeqs(cmd, args)
		if err != nil {
			return err
		}
		return withDeadLetters(cmd, showNATS, func(q *bus.DeadLetters) error {
			return dlqShow(cmd.Context(), q, seqs[0], showOut, cmd.OutOrStdout())
		})
	}

	replay := &cobra.Command{
		Use:   "replay SEQ...",
		Short: "Publish dead letters' events again (as admin)",
		Long: `Publishes each dead letter's event again on the events stream, once per event
(a replay reaches every consumer), and says what became of it. Exit 1 if one
was not replayed.`,
		Example: "  backstream dlq replay 12 13",
		Args:    minArgs("SEQ"),
	}
	replayNATS := addNATSFlags(replay.Flags(), "NATS URL")
	replay.RunE = func(cmd *cobra.Command, args []string) error {
		seqs, err := parseSeqs(cmd, args)
		if err != nil {
			return err
		}
		return withDeadLetters(cmd, replayNATS, func(q *bus.DeadLetters) error {
			return dlqReplay(cmd.Context(), q, seqs, cmd.OutOrStdout())
		})
	}

	purge := &cobra.Command{
		Use:     "purge SEQ...",
		Short:   "Delete dead letters",
		Example: "  backstream dlq purge 12 13",
		Args:    minArgs("SEQ"),
	}
	purgeNATS := addNATSFlags(purge.Flags(), "NATS URL")
	purge.RunE = func(cmd *cobra.Command, args []string) error {
		seqs, err := parseSeqs(cmd, args)
		if err != nil {
			return err
		}
		return withDeadLetters(cmd, purgeNATS, func(q *bus.DeadLetters) error {
			return dlqPurge(cmd.Context(), q, seqs, cmd.OutOrStdout())
		})
	}

	return groupCmd(&cobra.Command{
		Use:   "dlq",
		Short: "Read, replay and purge dead letters (events a consumer gave up on)",
		Long: `Reads, replays and purges dead letters: the events a consumer gave up on, kept
in BACKSTREAM_DLQ with why (docs/operations.md, "Dead letters").`,
		Example: "  backstream dlq list\n  backstream dlq show 12\n  backstream dlq replay 12",
	}, list, show, replay, purge)
}

// parseSeqs reads dead letters' sequence numbers.
func parseSeqs(cmd *cobra.Command, args []string) ([]uint64, error) {
	var seqs []uint64
	for _, a := range args {
		seq, err := strconv.ParseUint(a, 10, 64)
		if err != nil || seq == 0 {
			return nil, usageError("%s%q is not a dead letter's sequence number (see `backstream dlq list`)", prefix(cmd), a)
		}
		seqs = append(seqs, seq)
	}
	return seqs, nil
}

func withDeadLetters(cmd *cobra.Command, to targeter, f func(*bus.DeadLetters) error) error {
	b, _, err := connect(cmd.Context(), to)
	if err != nil {
		return err
	}
	defer b.Close()
	return f(b.DeadLetters())
}

func dlqList(ctx context.Context, q *bus.DeadLetters, f bus.DeadLetterFilter, output *outputFlag, w, stderr io.Writer) error {
	list, err := q.List(ctx, f)
	if err != nil {
		return err
	}
	if len(list) == f.Limit {
		defer nextPage(stderr, "more may follow", f.Limit, "backstream dlq list",
			"--after", strconv.FormatUint(list[len(list)-1].Seq, 10), "--consumer", f.Consumer, "--plan", f.Plan)
	}
	if output.structured() {
		if list == nil {
			list = []bus.DeadLetter{}
		}
		return output.write(w, list, nil)
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

func dlqShow(ctx context.Context, q *bus.DeadLetters, seq uint64, output *outputFlag, w io.Writer) error {
	c, err := q.Get(ctx, seq)
	if err != nil {
		return err
	}
	isJSON := !c.Cut && json.Valid(c.Data)
	if output.structured() {
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
		return output.write(w, out, nil)
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
