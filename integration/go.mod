module github.com/backstream/backstream/integration

go 1.26

require (
	github.com/backstream/backstream/events v0.0.0-00010101000000-000000000000
	github.com/backstream/backstream/pkg v0.0.0-00010101000000-000000000000
	github.com/backstream/backstream/services v0.0.0-00010101000000-000000000000
)

replace (
	github.com/backstream/backstream/events => ../events
	github.com/backstream/backstream/pkg => ../pkg
	github.com/backstream/backstream/services => ../services
)
