package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/imashard/imashard/pkg/securityfs"
	"github.com/imashard/imashard/pkg/trim"
)

type securityfsStatus struct {
	Mount          string           `json:"mount"`
	IMADir         string           `json:"ima_dir"`
	Count          int64            `json:"runtime_measurements_count"`
	Violations     int64            `json:"violations"`
	Staging        bool             `json:"staging_supported"`
	StagingMessage string           `json:"staging_message,omitempty"`
	Lists          []securityfsList `json:"lists"`
	State          *trim.State      `json:"trim_state,omitempty"`
}

type securityfsList struct {
	Name   string `json:"name"`
	Format string `json:"format"`
	Bank   string `json:"bank"`
	Staged bool   `json:"staged,omitempty"`
	Legacy bool   `json:"legacy,omitempty"`
}

// runSecurityfs prints the kernel's IMA measurement lists and counters,
// whether the kernel can trim them, and the trim state of a chain.
func runSecurityfs(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("securityfs", "securityfs [--mount DIR] [--dir CHAIN] [--json]", stderr)
	mount := fs.String("mount", "", "securityfs mount point; empty finds it in /proc/self/mountinfo or mounts it at "+securityfs.DefaultMountPoint)
	dir := fs.String("dir", "", "chain directory whose trim state (live-state.json) to show")
	asJSON := fs.Bool("json", false, "print JSON instead of text")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("%w: unexpected arguments %v", errUsage, fs.Args())
	}

	sfs, err := securityfs.Open(*mount)
	if err != nil {
		return err
	}
	st := securityfsStatus{Mount: sfs.Root, IMADir: sfs.IMADir}
	if st.Count, err = sfs.Count(); err != nil {
		return err
	}
	if st.Violations, err = sfs.Violations(); err != nil {
		return err
	}
	switch err := sfs.CheckStaging(); {
	case err == nil:
		st.Staging = true
	case errors.Is(err, securityfs.ErrStagingNotSupported):
		st.StagingMessage = err.Error()
	default:
		return err
	}
	lists, err := sfs.Lists()
	if err != nil {
		return err
	}
	for _, l := range lists {
		st.Lists = append(st.Lists, securityfsList{Name: l.Name, Format: l.Format.String(), Bank: l.Alg.String(), Staged: l.Staged, Legacy: l.Legacy})
	}
	if *dir != "" {
		if st.State, err = trim.LoadState(*dir); err != nil {
			return err
		}
	}

	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	fmt.Fprintf(stdout, "IMA directory:  %s\n", st.IMADir)
	fmt.Fprintf(stdout, "entries:        %d (current list; staged entries not counted)\n", st.Count)
	fmt.Fprintf(stdout, "violations:     %d\n", st.Violations)
	if st.Staging {
		fmt.Fprintln(stdout, "trimming:       supported")
	} else {
		fmt.Fprintf(stdout, "trimming:       %s\n", st.StagingMessage)
	}
	for _, l := range st.Lists {
		fmt.Fprintf(stdout, "list:           %s (%s, %s)\n", l.Name, l.Format, l.Bank)
	}
	if st.State != nil {
		fmt.Fprintf(stdout, "live start:     history index %d (%d carried entries)\n", st.State.LiveStart, st.State.Carry)
		if st.State.Pending != nil {
			fmt.Fprintf(stdout, "pending trim:   %d entries; the next `snapshot --trim` resolves it\n", st.State.Pending.Count)
		}
	}
	return nil
}
