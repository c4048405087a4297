package main

import (
	"github.com/spf13/cobra"
)

func newExtractCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "extract BACKUP --to DIR (--plan-file FILE [--destination NAME] | storage flags)",
		Short: "Write a backup as the files its database's own tools read, with no NATS",
		Long: `Reads BACKUP (PLAN/ID, ID or PLAN/latest) from the storage and the key alone,
checks it as restore does (frame CRCs, the plaintext digest, falling back to
another copy), and writes it into DIR as the native files of its source
(docs/sources.md, "Native files"):

  postgres   <db>.dump per database (pg_restore) and globals.sql (psql)
  mariadb    <db>.sql or dump.sql (the mariadb client), mariabackup.xbstream (mbstream -x)
  redis      dump.rdb (redis-server, redis-check-rdb)
  mongodb    <db>/<collection>.bson and .metadata.json (mongorestore --dir)
  files      files.tar (tar)

It prints each file's name relative to DIR, one per line. It never replaces a
file in DIR, and all or nothing: when it fails (a check, a cut stream, a name
already there), DIR holds nothing of it. A command source has no native form:
use restore --to FILE.`,
		Example: `  backstream extract orders/latest --plan-file orders.yaml --identity key.txt --to ./orders-native
  pg_restore --list ./orders-native/orders.dump`,
		Args: exactArgs("BACKUP"),
	}
	fs := c.Flags()
	var sf storageFlags
	sf.register(fs)
	var o restoreOptions
	fs.StringVar(&o.extract, "to", "", "directory to write the native files into (made when missing)")
	fs.StringVar(&o.identity, "identity", "", "age identity file")
	fs.StringVar(&o.passEnv, "passphrase-env", "", "environment variable holding the passphrase")
	fs.BoolVar(&o.allowFailed, "allow-failed", false, "also extract a backup whose run failed after it was stored (never picked by latest)")
	fs.BoolVar(&o.fallbackOlder, "fallback-older", false, "when every copy of the backup fails its checks, extract the previous verified backup (and so on)")
	_ = c.MarkFlagRequired("to")
	c.RunE = func(cmd *cobra.Command, args []string) error {
		return restoreBackup(cmd.Context(), &sf, args[0], o, cmd.OutOrStdout(), cmd.ErrOrStderr())
	}
	return c
}
