package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/services/app"
)

// TestRunOnAThreeNodeCluster runs backstream against a real JetStream cluster
// of three embedded servers on loopback, with every stream and bucket
// replicated three times, and finishes a run after one node is stopped.
func TestRunOnAThreeNodeCluster(t *testing.T) {
	servers, url := bustest.Cluster(t, 3)
	env := harness.Start(t, harness.Options{NATS: url, Config: func(c *app.Config) { c.Replicas = 3 }})
	env.Apply(commandPlan("clustered", t.TempDir(), `["head", "-c", "2000000", "/dev/urandom"]`, ""))
	if r := env.Wait(env.Trigger("clustered"), 2*time.Minute); r.Phase != runs.Succeeded {
		t.Fatalf("run on the cluster: %s %s", r.Phase, r.Error)
	}
	servers[2].Shutdown()
	// Streams whose leader was on the stopped node elect a new one; requests
	// time out meanwhile, as they would for any client of a cluster.
	deadline := time.Now().Add(time.Minute)
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
