package main

import (
	"github.com/spf13/pflag"

	"github.com/backstream/backstream/pkg/bus"
)

// natsTarget is a NATS server list and the credentials to use there.
type natsTarget struct {
	URL  string
	Auth bus.Auth
}

// natsFlags are the connection flags every command that talks to NATS takes.
// Secrets never come from argv: a password only from $BACKSTREAM_NATS_PASSWORD,
// keys only from files.
type natsFlags struct {
	url  *string
	auth bus.Auth
}

func addNATSFlags(fs *pflag.FlagSet, urlDoc string) *natsFlags {
	f := &natsFlags{}
	f.url = fs.String("nats", "", urlDoc)
	fs.StringVar(&f.auth.CredsFile, "nats-creds", "", "NATS credentials FILE (JWT + nkey; or $"+bus.EnvCreds+")")
	fs.StringVar(&f.auth.NKeyFile, "nats-nkey", "", "NATS nkey seed FILE (or $"+bus.EnvNKey+")")
	fs.StringVar(&f.auth.User, "nats-user", "", "NATS user; the password is read from $"+bus.EnvPassword+" (or $"+bus.EnvUser+")")
	fs.StringVar(&f.auth.TLSCA, "nats-tls-ca", "", "CA FILE that signed the NATS server's certificate (or $"+bus.EnvTLSCA+")")
	fs.StringVar(&f.auth.TLSCert, "nats-tls-cert", "", "client certificate FILE for NATS (or $"+bus.EnvTLSCert+")")
	fs.StringVar(&f.auth.TLSKey, "nats-tls-key", "", "client key FILE for NATS (or $"+bus.EnvTLSKey+")")
	fs.StringVar(&f.auth.Inbox, "nats-inbox-prefix", "", "reply subject prefix (default _INBOX_<user>; or $"+bus.EnvInbox+")")
	return f
}

// target resolves the URL (--nats, $BACKSTREAM_NATS, the embedded default)
// and the credentials (flags, environment, else a local serve's admin
// credentials under $BACKSTREAM_DATA or ./data).
func (f *natsFlags) target() (natsTarget, error) {
	url := natsURL(*f.url)
	a, err := bus.ResolveAuth(f.auth, url)
	if err != nil {
		return natsTarget{}, usageError("%v", err)
	}
	return natsTarget{URL: url, Auth: a}, nil
}

// target makes a resolved target a targeter too.
func (t natsTarget) target() (natsTarget, error) { return t, nil }

// targeter is where a command connects: flags still to resolve, or a target.
type targeter interface {
	target() (natsTarget, error)
}
