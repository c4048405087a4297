package retention_test

import (
	"fmt"
	"time"

	"github.com/backstream/backstream/pkg/retention"
)

func ExampleSimulate() {
	policy := []byte("keepDaily: 2\nkeepTags: [pinned]\n")
	backups := []byte(`[
		{"id": "c", "time": "2025-06-18T02:00:00+02:00"},
		{"id": "b", "time": "2025-06-17T14:00:00+02:00"},
		{"id": "a", "time": "2025-06-17T02:00:00+02:00"},
		{"id": "old", "time": "2025-06-01T02:00:00+02:00", "tags": ["pinned"]},
		{"id": "x", "time": "2025-06-18T08:00:00+02:00", "verified": false}
	]`)
	berlin, _ := time.LoadLocation("Europe/Berlin")
	now := time.Date(2025, 6, 18, 9, 0, 0, 0, berlin)
	out, err := retention.Simulate(policy, backups, now, berlin)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(string(out))
	// Output:
	// [
	//   {
	//     "id": "x",
	//     "time": "2025-06-18T08:00:00+02:00",
	//     "action": "keep",
	//     "reasons": [
	//       "pending verify"
	//     ]
	//   },
	//   {
	//     "id": "c",
	//     "time": "2025-06-18T02:00:00+02:00",
	//     "action": "keep",
	//     "reasons": [
	//       "newest verified",
	//       "daily #1"
	//     ]
	//   },
	//   {
	//     "id": "b",
	//     "time": "2025-06-17T14:00:00+02:00",
	//     "action": "keep",
	//     "reasons": [
	//       "daily #2"
	//     ]
	//   },
	//   {
	//     "id": "a",
	//     "time": "2025-06-17T02:00:00+02:00",
	//     "action": "remove",
	//     "reasons": [
	//       "no rule matched"
	//     ]
	//   },
	//   {
	//     "id": "old",
	//     "time": "2025-06-01T02:00:00+02:00",
	//     "action": "keep",
	//     "reasons": [
	//       "tag pinned"
	//     ]
	//   }
	// ]
}
