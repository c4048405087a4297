package s3

// SetGrowEvery makes uploads with the default part size double it every n
// parts until the test ends, so a test sees the growth on a small object.
func SetGrowEvery(t interface{ Cleanup(func()) }, n int) {
	old := growEvery
	growEvery = n
	t.Cleanup(func() { growEvery = old })
}
