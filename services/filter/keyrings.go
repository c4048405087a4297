package filter

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// Run unlocks the keyring of every plan that seals with a passphrase when
// the service starts and whenever such a plan is applied, before any of
// its backups needs it. scrypt (64 MiB, docs/security.md) then runs while
// no backup streams, instead of on top of the first backup's buffers, and
// the first backup does not wait for it; verify in the same process shares
// the unlocked identity. A plan whose keyring cannot be made here (its
// passphrase secret is missing, say) is logged and left to its runs, which
// fail with the reason. Run returns when ctx is done.
func (s *Service) Run(ctx context.Context) error {
	w, err := s.Bus.Plans.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return fmt.Errorf("filter: watch plans: %w", err)
	}
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return nil
			}
			if e == nil { // the plans stored at the start were all seen
				continue
			}
			s.warmKeyring(ctx, e.Key())
		}
	}
}

// warmKeyring ensures the keyring of plan name if it seals with a
// passphrase.
func (s *Service) warmKeyring(ctx context.Context, name string) {
	p, err := s.Plans.Get(ctx, name)
	if err != nil {
		return // an invalid or deleted plan runs nothing; its runs say why
	}
	if e := p.Spec.Filters.Encryption; e == nil || e.Passphrase == nil {
		return
	}
	if _, err := Options(ctx, p, s.keyringStore()); err != nil && ctx.Err() == nil {
		s.Log.Warn("plan keyring not ready ahead of its backups", "plan", name, "err", err)
		return
	}
	s.Log.Debug("plan keyring unlocked", "plan", name)
}
