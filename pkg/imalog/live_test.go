package imalog

import (
	"errors"
	"os"
	"testing"

	"github.com/imashard/imashard/pkg/pcr"
)

// TestLiveListOnHost checks LiveList against the running kernel: a path
// that exists where the kernel has IMA, ErrNotSupported where it has not.
func TestLiveListOnHost(t *testing.T) {
	path, opts, err := LiveList(pcr.SHA256)
	if _, statErr := os.Stat(SecurityfsDir + "/" + BinaryListName); statErr != nil {
		if !errors.Is(err, ErrNotSupported) {
			t.Errorf("kernel without IMA: err = %v, want ErrNotSupported", err)
		}
		t.Logf("the host kernel has no IMA: %v", err)
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("LiveList returned %s: %v", path, err)
	}
	if opts.DigestAlg != pcr.SHA256 && opts.DigestAlg != pcr.SHA1 {
		t.Errorf("digest algorithm %s", opts.DigestAlg)
	}
}
