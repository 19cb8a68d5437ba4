package durability

// SetJobHook makes a call f after every job run of Start's timers (set it before Start). For
// the tests of package durability_test.
func SetJobHook(a *Agent, f func(job string, err error)) { a.onJob = f }
