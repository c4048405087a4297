//go:build race

package bustest

// raceDetector is whether the test binary was built with -race.
const raceDetector = true
