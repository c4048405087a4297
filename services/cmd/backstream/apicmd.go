package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/backstream/backstream/services/api"
)

// apiFlags registers serve's API flags; the config is filled once fs is
// parsed.
func apiFlags(fs *pflag.FlagSet) *api.Config {
	c := &api.Config{}
	fs.StringVar(&c.TokensFile, "api-tokens", "", "`FILE` of hashed API bearer tokens, one 'NAME ROLE sha256:HEX' a line (default with no --api-client-ca: DATA/auth/api-tokens, made on first start with an admin token in DATA/auth/api-admin.token)")
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

func newAPITokenCmd() *cobra.Command {
	var name, roleName, file string
	create := &cobra.Command{
		Use:   "create --name NAME --role read|trigger|restore|admin [--file FILE]",
		Short: "Make a bearer token for the HTTP API",
		Long: `Makes a bearer token for the HTTP API, appends its hash to the tokens file
(created 0600) and prints the token once on stdout; it is not kept anywhere.
A running serve reads the file again when it changes.`,
		Example: "  backstream api-token create --name ci --role trigger > ci.token",
		Args:    exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return apiTokenCreate(name, roleName, file, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	create.Flags().StringVar(&name, "name", "", "name of the token's holder: shown as requestedBy api:NAME (no spaces)")
	create.Flags().StringVar(&roleName, "role", "", "read, trigger, restore or admin")
	create.Flags().StringVar(&file, "file", apiDefaultTokens(), "tokens file serve reads (--api-tokens)")
	return groupCmd(&cobra.Command{
		Use:     "api-token",
		Short:   "Manage bearer tokens of the HTTP API",
		Example: "  backstream api-token create --name ci --role trigger",
	}, create)
}

func apiTokenCreate(name, roleName, file string, stdout, stderr io.Writer) error {
	if name == "" {
		return usageError("api-token create: --name: required")
	}
	if err := api.ValidTokenName(name); err != nil {
		return usageError("api-token create: --name: %v", err)
	}
	role, err := api.ParseRole(roleName)
	if err != nil {
		return usageError("api-token create: --role: %v", err)
	}
	token, err := api.AddToken(file, name, role)
	if err != nil {
		return fmt.Errorf("api-token create: %w", err)
	}
	fmt.Fprintln(stdout, token)
	fmt.Fprintf(stderr, "token %s (role %s) added to %s; it is shown only this once\n", name, role, file)
	return nil
}
