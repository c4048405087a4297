package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/pkg/testenv"
	"github.com/backstream/backstream/services/app"
)

// TestRunOnAThreeNodeCluster runs backstream against a real JetStream cluster
// of three embedded servers on loopback, with every stream and bucket
// replicated three times, and finishes a run after one node is stopped.
func TestRunOnAThreeNodeCluster(t *testing.T) {
	const n = 3
	clientPorts := make([]int, n)
	routePorts := make([]int, n)
	for i := range n {
		clientPorts[i], routePorts[i] = testenv.FreePort(t), testenv.FreePort(t)
	}
	servers := make([]*bus.Server, n)
	authData := t.TempDir()
	for i := range n {
		var routes []string
		for j := range n {
			if j != i {
				routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", routePorts[j]))
			}
		}
		i := i
		srv, err := startClusterNode(t, i, clientPorts[i], routePorts[i], routes, authData)
		if err != nil {
			t.Fatal(err)
		}
		servers[i] = srv
	}
	deadline := time.Now().Add(30 * time.Second)
	for !servers[0].JetStreamReady() {
		if time.Now().After(deadline) {
			t.Fatal("cluster never elected a JetStream leader")
		}
		time.Sleep(50 * time.Millisecond)
	}
	url := fmt.Sprintf("nats://127.0.0.1:%d,nats://127.0.0.1:%d,nats://127.0.0.1:%d", clientPorts[0], clientPorts[1], clientPorts[2])
	bustest.Register(t, fmt.Sprintf("nats://127.0.0.1:%d", clientPorts[0]), authData)
	env := harness.Start(t, harness.Options{NATS: url, Config: func(c *app.Config) { c.Replicas = 3 }})
	env.Apply(commandPlan("clustered", t.TempDir(), `["head", "-c", "2000000", "/dev/urandom"]`, ""))
	if r := env.Wait(env.Trigger("clustered"), 2*time.Minute); r.Phase != runs.Succeeded {
		t.Fatalf("run on the cluster: %s %s", r.Phase, r.Error)
	}
	servers[2].Shutdown()
	// Streams whose leader was on the stopped node elect a new one; requests
	// time out meanwhile, as they would for any client of a cluster.
	deadline = time.Now().Add(time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := env.Plans.Get(ctx, "clustered")
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cluster did not recover from losing a node: %v", err)
		}
	}
	if r := env.Wait(env.Trigger("clustered"), 2*time.Minute); r.Phase != runs.Succeeded {
		t.Fatalf("run with one node down: %s %s", r.Phase, r.Error)
	}
}

func startClusterNode(t *testing.T, i, port, routePort int, routes []string, authData string) (*bus.Server, error) {
	srv, err := bus.StartServer(bus.ServerConfig{
		Name:     fmt.Sprintf("node-%d", i),
		Port:     port,
		StoreDir: t.TempDir(),
		// The nodes share one set of users, as a cluster's configuration does.
		AuthDir: filepath.Join(authData, bus.AuthDirName),
		Cluster: &bus.ClusterConfig{Name: "backstream-test", Host: "127.0.0.1", Port: routePort, Routes: routes},
	})
	if err != nil {
		return nil, err
	}
	t.Cleanup(srv.Shutdown)
	return srv, nil
}
