package main

import "testing"

// TestIsLiveListCleansPath checks that only paths inside securityfs count
// as the kernel's live list, after cleaning.
func TestIsLiveListCleansPath(t *testing.T) {
	cases := map[string]bool{
		"/sys/kernel/security/ima/binary_runtime_measurements":         true,
		"/sys/kernel/security//ima/binary_runtime_measurements_sha256": true,
		"/sys/kernel/security/../../tmp/x":                             false,
		"/sys/kernel/security/ima/../../../tmp/list":                   false,
		"/tmp/sys/kernel/security/ima/binary_runtime_measurements":     false,
		"list.bin": false,
	}
	for path, want := range cases {
		if got := isLiveList(path); got != want {
			t.Errorf("isLiveList(%q) = %v, want %v", path, got, want)
		}
	}
}
