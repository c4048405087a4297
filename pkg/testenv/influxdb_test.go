package testenv_test

import (
	"net/http"
	"testing"

	"github.com/backstream/backstream/pkg/testenv"
)

func TestInfluxDBStartStop(t *testing.T) {
	t.Parallel()
	s := testenv.InfluxDB(t)
	s.CreateDatabase(t, "backstream")
	if err := s.Query(t, `SHOW DATABASES`); err != nil {
		t.Fatal(err)
	}
	s.Stop()
	if resp, err := http.Get(s.URL() + "/ping"); err == nil {
		resp.Body.Close()
		t.Fatal("ping answered after Stop")
	}
	s.Start()
	// The database survives a restart: creating it again is a no-op and a
	// query against it works.
	if err := s.Query(t, `SHOW MEASUREMENTS ON "backstream"`); err != nil {
		t.Fatal(err)
	}
}
