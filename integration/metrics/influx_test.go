// Package metrics tests the metrics stage, the Grafana dashboard and the
// alert rules against a real InfluxDB 1.8 (pkg/testenv).
package metrics

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"testing"
	"time"

	influxdb2 "github.com/influxdata/influxdb-client-go/v2"

	"github.com/backstream/backstream/pkg/testenv"
)

const database = "backstream"

// startInflux starts InfluxDB 1.8 with the backstream database.
func startInflux(t *testing.T) *testenv.InfluxServer {
	t.Helper()
	s := testenv.InfluxDB(t)
	s.CreateDatabase(t, database)
	return s
}

// flux runs a Flux query and returns its records as maps.
func flux(t *testing.T, s *testenv.InfluxServer, q string) ([]map[string]any, error) {
	t.Helper()
	c := influxdb2.NewClient(s.URL(), "")
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := c.QueryAPI("").Query(ctx, q)
	if err != nil {
		return nil, err
	}
	defer res.Close()
	var out []map[string]any
	for res.Next() {
		out = append(out, res.Record().Values())
	}
	return out, res.Err()
}

// series is one series of an InfluxQL answer.
type series struct {
	Name    string            `json:"name"`
	Tags    map[string]string `json:"tags"`
	Columns []string          `json:"columns"`
	Values  [][]any           `json:"values"`
}

// influxQL runs an InfluxQL query on the backstream database.
func influxQL(t *testing.T, s *testenv.InfluxServer, q string) []series {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	u := s.URL() + "/query?" + url.Values{"db": {database}, "q": {q}, "epoch": {"ns"}}.Encode()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("influxql %q: %v", q, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var r struct {
		Results []struct {
			Series []series `json:"series"`
			Error  string   `json:"error"`
		} `json:"results"`
		Error string `json:"error"`
	}
	d := json.NewDecoder(bytes.NewReader(body))
	d.UseNumber()
	if err := d.Decode(&r); err != nil || r.Error != "" || len(r.Results) == 0 || r.Results[0].Error != "" {
		t.Fatalf("influxql %q: %v %s", q, err, body)
	}
	return r.Results[0].Series
}

// count returns the number of points of measurement matching where.
func count(t *testing.T, s *testenv.InfluxServer, measurement, field, where string) int {
	t.Helper()
	q := fmt.Sprintf(`SELECT count(%q) FROM %q`, field, measurement)
	if where != "" {
		q += " WHERE " + where
	}
	ss := influxQL(t, s, q)
	if len(ss) == 0 {
		return 0
	}
	n, _ := ss[0].Values[0][1].(json.Number).Int64()
	return int(n)
}
