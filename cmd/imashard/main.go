// Command imashard keeps Linux IMA attestation intact across log truncation
// and kexec by cutting the measurement log into quote-anchored shards.
//
// Each subcommand lives in its own file as a function with the signature of
// runFunc, so tests call it directly without a process or global state.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/imashard/imashard/pkg/imalog"
	"github.com/imashard/imashard/pkg/tpm"
)

type runFunc func(args []string, stdin io.Reader, stdout, stderr io.Writer) error

type command struct {
	name    string
	summary string
	run     runFunc
}

// errUsage marks errors in the command line, which exit with status 2.
var errUsage = errors.New("usage error")

func commands() []command {
	return []command{
		// Subcommands are listed here in the order of a typical workflow.
		{"log", "show and replay IMA measurement lists", runLog},
		{"pcrs", "print PCR values read from the TPM", runPcrs},
		{"ak", "export the attestation key and EK for enrollment", runAk},
		{"quote", "make a TPM2_Quote, or verify one with 'quote verify'", runQuote},
		{"snapshot", "cut the next quote-anchored shard from the IMA log into a chain directory", runSnapshot},
		{"verify", "verify a chain of shards (and the live log) with the pinned AK", runVerify},
		{"export", "write a shard's quote and entries for tpm2_checkquote and evmctl", runExport},
		{"kexec", "snapshot the log and kexec into the next kernel with the shards", runKexec},
		{"boot", "verify carried shards and the live log in the initramfs of a new kernel", runBoot},
		{"securityfs", "show the kernel's IMA lists, counters and trim support", runSecurityfs},
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: imashard COMMAND [FLAGS] [ARGS]")
	fmt.Fprintln(w, "")
	fmt.Fprintln(w, "Commands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "")
	fmt.Fprintln(w, "Run 'imashard COMMAND --help' for the flags of a command.")
	fmt.Fprintln(w, "Set IMASHARD_LOG=debug for debug logs on standard error.")
}

// run dispatches to a subcommand. It is main without os.Exit.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		usage(stderr)
		return fmt.Errorf("%w: no command given", errUsage)
	}

	name := args[0]
	if name == "-h" || name == "--help" || name == "help" {
		usage(stdout)
		return nil
	}
	for _, c := range commands() {
		if c.name == name {
			return c.run(args[1:], stdin, stdout, stderr)
		}
	}
	usage(stderr)
	return fmt.Errorf("%w: unknown command %q", errUsage, name)
}

// maxSmallFileSize bounds AK keys, quotes and PCR files read from paths on
// the command line. These are at most a few KiB, and the bound turns a
// device such as /dev/zero passed by mistake into an error instead of a
// read that exhausts memory.
const maxSmallFileSize = 1 << 20

// readSmallFile reads path like os.ReadFile but fails when the file holds
// more than maxSmallFileSize bytes.
func readSmallFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()

	data, err := io.ReadAll(io.LimitReader(f, maxSmallFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxSmallFileSize {
		return nil, fmt.Errorf("%s is larger than %d bytes: pass the file itself, not a device or a log", path, maxSmallFileSize)
	}
	return data, nil
}

// newFlagSet returns a flag set that reports errors instead of exiting, and
// prints the summary line and the flags for --help.
func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: imashard %s\n\nFlags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args and wraps flag errors in errUsage. It returns
// flag.ErrHelp for --help, which callers pass up unchanged.
func parseFlags(fs *flag.FlagSet, args []string) error {
	err := fs.Parse(args)
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return err
	}
	return fmt.Errorf("%w: %v", errUsage, err)
}

// parseInterspersed parses flags that may follow positional arguments, as
// in "log replay FILE --pcrs P" or "verify DIR --live", where the flag
// package alone stops at the first positional argument. It returns the
// positional arguments.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := parseFlags(fs, args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return positional, nil
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

func setupLogging(stderr io.Writer) {
	level := slog.LevelWarn
	switch os.Getenv("IMASHARD_LOG") {
	case "debug":
		level = slog.LevelDebug
	case "info":
		level = slog.LevelInfo
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})))
}

func main() {
	setupLogging(os.Stderr)
	err := run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	code := exitCode(err)
	if code != 0 {
		fmt.Fprintf(os.Stderr, "imashard: %v\n", err)
	}
	os.Exit(code)
}

// exitCode maps the error of run to the exit status: 0 for success and
// --help, 2 for a mistake in the command line, 1 for every other failure.
// Reader options and TPM specs come only from flags, so their errors are
// command-line mistakes too.
func exitCode(err error) int {
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage), errors.Is(err, tpm.ErrInvalidSpec), errors.Is(err, imalog.ErrInvalidOptions):
		return 2
	default:
		return 1
	}
}
