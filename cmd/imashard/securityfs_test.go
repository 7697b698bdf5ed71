package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/imashard/imashard/pkg/securityfs"
)

func TestSecurityfsWithoutIMA(t *testing.T) {
	var stdout, stderr bytes.Buffer
	err := run([]string{"securityfs", "--mount", t.TempDir()}, nil, &stdout, &stderr)
	if !errors.Is(err, securityfs.ErrIMANotEnabled) {
		t.Fatalf("err = %v, want ErrIMANotEnabled", err)
	}
	if !strings.Contains(err.Error(), "CONFIG_IMA") {
		t.Errorf("error %q does not name CONFIG_IMA", err)
	}
}

func TestSecurityfsUsage(t *testing.T) {
	var stdout, stderr bytes.Buffer
	err := run([]string{"securityfs", "extra"}, nil, &stdout, &stderr)
	if !errors.Is(err, errUsage) {
		t.Fatalf("err = %v, want errUsage", err)
	}
}
