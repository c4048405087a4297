package testenv

import (
	"net"
	"testing"
)

// TestFreePortIsOutsideTheEphemeralRange: the port can be bound, and no
// outgoing connection can have taken it meanwhile (it lies below the
// range the kernel gives those).
func TestFreePortIsOutsideTheEphemeralRange(t *testing.T) {
	lo := ephemeralLow()
	for range 50 {
		port := FreePort(t)
		if port < minTestPort || port >= lo {
			t.Fatalf("port %d is not in %d..%d", port, minTestPort, lo-1)
		}
		l, err := net.Listen("tcp", Addr(port))
		if err != nil {
			t.Fatalf("port %d: %v", port, err)
		}
		l.Close()
	}
}
