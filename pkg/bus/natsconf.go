package bus

import (
	"fmt"
	"strconv"
	"strings"
)

// ServerConf is what a nats-server configuration file rendered from the
// role table holds besides its users: where it listens and stores, and its
// TLS and cluster settings.
type ServerConf struct {
	// Listen is the clients' host:port.
	Listen string
	// StoreDir is JetStream's file store.
	StoreDir string
	// MaxFileStore and MaxMemoryStore bound JetStream ("20GB"); memory
	// holds the chunk streams.
	MaxFileStore   string
	MaxMemoryStore string
	// TLS, when set, makes clients talk TLS only.
	TLS *ConfTLS
	// Cluster, when set, makes the server a node of a JetStream cluster;
	// its name, server name and routes come from the command line.
	Cluster *ConfCluster
}

// ConfTLS names the certificate files of a server.
type ConfTLS struct {
	// CertFile and KeyFile are the server's certificate; in a cluster it
	// also authenticates the node to the other nodes (client auth).
	CertFile string
	KeyFile  string
	// CAFile verifies clients' and other nodes' certificates.
	CAFile string
}

// ConfCluster is a node's cluster listener.
type ConfCluster struct {
	Listen string
}

// DeployServerConf is deploy/nats-server.conf: a node of the three-node
// cluster of deploy/compose.yaml, with TLS certificates from its secrets.
func DeployServerConf() ServerConf {
	tls := &ConfTLS{CertFile: "/run/secrets/nats-cert", KeyFile: "/run/secrets/nats-key", CAFile: "/run/secrets/nats-ca"}
	return ServerConf{
		Listen:         "0.0.0.0:4222",
		StoreDir:       "/data",
		MaxFileStore:   "20GB",
		MaxMemoryStore: "1GB",
		TLS:            tls,
		Cluster:        &ConfCluster{Listen: "0.0.0.0:6222"},
	}
}

// PasswordEnv is the environment variable a nats-server rendered by
// RenderServerConf reads role's password from. The server reads it at
// start; the file holds no secret.
func PasswordEnv(role string) string {
	return "BACKSTREAM_" + strings.ToUpper(strings.ReplaceAll(role, "-", "_")) + "_PASSWORD"
}

// RenderServerConf renders a nats-server configuration with one user per
// role of Roles, named after the role, whose password the server takes
// from the environment (PasswordEnv) and whose permissions are the role's
// (ForUser of the role's name: its replies come on _INBOX_<role>). No
// anonymous user exists: a client without credentials is refused.
func RenderServerConf(c ServerConf) []byte {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("# nats-server configuration of a backstream deployment: one user per role,\n")
	w("# each allowed only what its role needs. Generated from pkg/bus/roles.go by\n")
	w("#   go test ./pkg/bus -run TestDeployServerConf -update\n")
	w("# (do not edit; a test fails when this file and the table differ).\n")
	w("#\n")
	w("# Passwords come from the server's environment, one variable per role:\n")
	for _, r := range Roles() {
		w("#   %s\n", PasswordEnv(r.Name))
	}
	w("# A variable that is not set stops the server at start.\n")
	if c.TLS != nil {
		w("#\n# TLS: clients verify the server with the CA; in a cluster the nodes verify\n")
		w("# each other with it too, so the certificate names every node and allows\n")
		w("# both server and client authentication.\n")
	}
	w("\n")
	if host, port, ok := strings.Cut(c.Listen, ":"); ok {
		w("host: %s\nport: %s\n", host, port)
	}
	w("max_payload: %d\n", DefaultMaxPayload)
	w("jetstream {\n  store_dir: %s\n", strconv.Quote(c.StoreDir))
	if c.MaxFileStore != "" {
		w("  max_file_store: %s\n", c.MaxFileStore)
	}
	if c.MaxMemoryStore != "" {
		w("  max_memory_store: %s\n", c.MaxMemoryStore)
	}
	w("}\n")
	tlsBlock := func(indent string, verify bool) {
		t := c.TLS
		w("%stls {\n", indent)
		w("%s  cert_file: %s\n", indent, strconv.Quote(t.CertFile))
		w("%s  key_file: %s\n", indent, strconv.Quote(t.KeyFile))
		w("%s  ca_file: %s\n", indent, strconv.Quote(t.CAFile))
		if verify {
			w("%s  verify: true\n", indent)
		}
		w("%s  timeout: 5\n", indent)
		w("%s}\n", indent)
	}
	if c.TLS != nil {
		tlsBlock("", false)
	}
	if c.Cluster != nil {
		w("cluster {\n  listen: %s\n", c.Cluster.Listen)
		if c.TLS != nil {
			// Routes carry every message unfiltered: only nodes holding a
			// certificate of the CA may join.
			tlsBlock("  ", true)
		}
		w("}\n")
	}
	w("\nauthorization {\n  users: [\n")
	for _, r := range Roles() {
		p := r.ForUser(r.Name)
		w("    # %s: %s\n", r.Name, r.Doc)
		w("    {\n      user: %s\n      password: $%s\n      permissions: {\n", strconv.Quote(r.Name), PasswordEnv(r.Name))
		w("        publish: {\n")
		list("          allow", p.Publish, &b)
		if len(p.DenyPublish) > 0 {
			list("          deny", p.DenyPublish, &b)
		}
		w("        }\n")
		w("        subscribe: {\n")
		list("          allow", p.Subscribe, &b)
		w("        }\n")
		if p.Responses {
			w("        allow_responses: {max: 1, expires: \"2m\"}\n")
		}
		w("      }\n    }\n")
	}
	w("  ]\n}\n")
	return []byte(b.String())
}

// list writes a quoted subject list, one subject a line: "$JS…" unquoted
// would be a variable reference.
func list(key string, subjects []string, b *strings.Builder) {
	indent := strings.Repeat(" ", len(key)-len(strings.TrimLeft(key, " ")))
	b.WriteString(key + ": [\n")
	for _, s := range subjects {
		b.WriteString(indent + "  " + strconv.Quote(s) + "\n")
	}
	b.WriteString(indent + "]\n")
}
