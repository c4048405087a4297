package schedule_test

import (
	"fmt"
	"time"

	"github.com/backstream/backstream/pkg/schedule"
)

// A scheduler that was down from 01:10 to 04:20 catches up with one backup.
func ExampleDue() {
	s, err := schedule.Parse(schedule.Spec{Cron: "@hourly", MissedRunPolicy: schedule.MissedRunOnce})
	if err != nil {
		fmt.Println(err)
		return
	}
	lastFired := time.Date(2024, 6, 7, 1, 0, 0, 0, time.UTC)
	now := time.Date(2024, 6, 7, 4, 20, 0, 0, time.UTC)
	fire, skipped := schedule.Due(s, "orders", lastFired, now)
	for _, slot := range fire {
		fmt.Println("fire", slot.Format(time.Kitchen), schedule.TriggerID("orders", slot))
	}
	for _, slot := range skipped {
		fmt.Println("skip", slot.Format(time.Kitchen))
	}
	// Output:
	// fire 4:00AM sched-orders-1717732800
	// skip 2:00AM
	// skip 3:00AM
}

func ExampleSchedule_Slots() {
	s, err := schedule.Parse(schedule.Spec{Cron: "30 2 * * *", Timezone: "Europe/Berlin"})
	if err != nil {
		fmt.Println(err)
		return
	}
	from := time.Date(2024, 3, 30, 0, 0, 0, 0, time.UTC)
	for _, slot := range s.Slots(from, from.Add(72*time.Hour)) {
		fmt.Println(slot.Format(time.RFC3339))
	}
	// Output:
	// 2024-03-30T02:30:00+01:00
	// 2024-03-31T03:30:00+02:00
	// 2024-04-01T02:30:00+02:00
}
