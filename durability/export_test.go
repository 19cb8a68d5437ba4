package durability

// SetJobHook makes a call f after every job run of Run's timers (set it before Run). For the
// tests of package durability_test.
func SetJobHook(a *Agent, f func(job string, err error)) { a.onJob = f }
