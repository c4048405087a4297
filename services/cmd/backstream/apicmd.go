package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/backstream/backstream/services/api"
)

// apiFlags registers serve's API flags; the config is filled once fs is
// parsed.
func apiFlags(fs *flag.FlagSet) *api.Config {
	c := &api.Config{}
	fs.StringVar(&c.TokensFile, "api-tokens", "", "file of hashed API bearer tokens, one `NAME ROLE sha256:HEX` a line (default with no --api-client-ca: DATA/auth/api-tokens, made on first start with an admin token in DATA/auth/api-admin.token)")
	fs.StringVar(&c.TLSCert, "api-tls-cert", "", "PEM certificate: the API serves HTTPS (needed to listen beyond loopback)")
	fs.StringVar(&c.TLSKey, "api-tls-key", "", "PEM private key of --api-tls-cert")
	fs.StringVar(&c.ClientCA, "api-client-ca", "", "PEM CA that verifies API client certificates (mTLS): identity is the CN, role the first OU naming one")
	return c
}

// apiDefaultTokens is the tokens file of a local serve: $BACKSTREAM_DATA,
// else ./data, then auth/api-tokens.
func apiDefaultTokens() string {
	dir := os.Getenv("BACKSTREAM_DATA")
	if dir == "" {
		dir = "./data"
	}
	return filepath.Join(dir, api.LocalTokensFile)
}

const apiTokenUsage = `usage: backstream api-token create --name NAME --role read|trigger|restore|admin [--file FILE]

Makes a bearer token for the HTTP API, appends its hash to the tokens file
(created 0600) and prints the token once on stdout; it is not kept anywhere.
A running serve reads the file again when it changes.
`

func apiTokenCmd(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "create" {
		fmt.Fprint(stderr, apiTokenUsage)
		return usageError("api-token: want the subcommand create")
	}
	fs := flag.NewFlagSet("api-token create", flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("name", "", "name of the token's holder: shown as requestedBy api:NAME (no spaces)")
	roleName := fs.String("role", "", "read, trigger, restore or admin")
	file := fs.String("file", apiDefaultTokens(), "tokens file serve reads (--api-tokens)")
	if err := fs.Parse(args[1:]); err != nil {
		return usageError("api-token create: %v", err)
	}
	if fs.NArg() > 0 {
		return usageError("api-token create: unexpected argument %q", fs.Arg(0))
	}
	if *name == "" {
		return usageError("api-token create: --name: required")
	}
	if err := api.ValidTokenName(*name); err != nil {
		return usageError("api-token create: --name: %v", err)
	}
	role, err := api.ParseRole(*roleName)
	if err != nil {
		return usageError("api-token create: --role: %v", err)
	}
	token, err := api.AddToken(*file, *name, role)
	if err != nil {
		return fmt.Errorf("api-token create: %w", err)
	}
	fmt.Fprintln(stdout, token)
	fmt.Fprintf(stderr, "token %s (role %s) added to %s; it is shown only this once\n", *name, role, *file)
	return nil
}
