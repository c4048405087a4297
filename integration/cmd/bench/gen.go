package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"

	"github.com/backstream/backstream/pkg/datagen"
)

// genCmd writes datagen.New(seed, size) to stdout: the source command of the
// bench's plan, so the pipeline reads a real child process's pipe.
func genCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("gen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	size := fs.String("size", "", "bytes to write (1GiB, 256MiB, …)")
	seed := fs.Int64("seed", 1, "seed of the data set")
	if err := fs.Parse(args); err != nil {
		return err
	}
	n, err := parseSize(*size)
	if err != nil || *size == "" {
		return fmt.Errorf("%w: gen --size: %v", errUsage, err)
	}
	w := bufio.NewWriterSize(stdout, 256<<10)
	if _, err := io.Copy(w, datagen.New(*seed, n)); err != nil {
		return fmt.Errorf("gen: %w", err)
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("gen: %w", err)
	}
	return nil
}
