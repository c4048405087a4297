// Package ctxio ties plain readers to a context, so a copy loop over a
// reader that would go on (a pipe, a network body) ends when its context is
// done.
package ctxio

import (
	"context"
	"io"
)

// Reader returns r, failing every Read with ctx's error once ctx is done.
func Reader(ctx context.Context, r io.Reader) io.Reader { return reader{ctx: ctx, r: r} }

type reader struct {
	ctx context.Context
	r   io.Reader
}

func (c reader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
