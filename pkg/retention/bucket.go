package retention

import "time"

// bucket is a calendar period a count or within rule keeps one backup of.
type bucket int

const (
	bucketLast bucket = iota // every backup is its own bucket
	bucketHour
	bucketDay
	bucketWeek // ISO 8601 week, Monday to Sunday
	bucketMonth
	bucketQuarter // calendar quarters: Jan-Mar, Apr-Jun, Jul-Sep, Oct-Dec
	bucketYear
)

// name is the word used in reasons: "daily #3".
func (b bucket) name() string {
	return [...]string{"last", "hourly", "daily", "weekly", "monthly", "quarterly", "yearly"}[b]
}

// key identifies the bucket of t in loc; nr is the backup's position among
// the candidates, which is its own bucket for bucketLast. Keys grow with time,
// so the backups of one bucket are adjacent in a time-sorted list.
func (b bucket) key(t time.Time, loc *time.Location, nr int) int {
	t = t.In(loc)
	switch b {
	case bucketHour:
		return t.Year()*1_000_000 + int(t.Month())*10_000 + t.Day()*100 + t.Hour()
	case bucketDay:
		return t.Year()*10_000 + int(t.Month())*100 + t.Day()
	case bucketWeek:
		y, w := t.ISOWeek()
		return y*100 + w
	case bucketMonth:
		return t.Year()*100 + int(t.Month())
	case bucketQuarter:
		return t.Year()*10 + (int(t.Month())-1)/3 + 1
	case bucketYear:
		return t.Year()
	default:
		return nr
	}
}
