package main

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/imashard/imashard/pkg/imalog"
	"github.com/imashard/imashard/pkg/pcr"
	"github.com/imashard/imashard/pkg/replay"
	"github.com/imashard/imashard/pkg/tpm"
)

// errCheckFailed reports that a check ran and found a mismatch; the report
// is already printed.
var errCheckFailed = errors.New("check failed")

func runLog(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		w := stderr
		if len(args) > 0 {
			w = stdout
		}
		fmt.Fprintln(w, "usage: imashard log show [FLAGS] [FILE]")
		fmt.Fprintln(w, "       imashard log replay [FLAGS] [FILE]")
		fmt.Fprintln(w, "")
		fmt.Fprintln(w, "show    print the entries of an IMA measurement list")
		fmt.Fprintln(w, "replay  replay a list into PCR values and compare them with PCR files")
		if len(args) == 0 {
			return fmt.Errorf("%w: log needs a subcommand: show or replay", errUsage)
		}
		return nil
	}
	switch args[0] {
	case "show":
		return runLogShow(args[1:], stdin, stdout, stderr)
	case "replay":
		return runLogReplay(args[1:], stdin, stdout, stderr)
	}
	return fmt.Errorf("%w: unknown log subcommand %q: use show or replay", errUsage, args[0])
}

// listFlags are the flags that set how a list is read.
type listFlags struct {
	bank           string
	format         string
	byteOrder      string
	digestSize     int
	allowTruncated bool
}

func (f *listFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.bank, "bank", "", "algorithm of the list's template digests (sha1, sha256, sha384, sha512, sm3_256); default: from the file name, else sha1. Without FILE it selects the live per-bank file binary_runtime_measurements_<alg>")
	fs.StringVar(&f.format, "format", "auto", "list format: binary, ascii, or auto (from the file name, else from the first bytes)")
	fs.StringVar(&f.byteOrder, "byte-order", "auto", "byte order of a binary list: auto, le (also canonical) or be; for an ASCII list, the order used to rebuild template data")
	fs.IntVar(&f.digestSize, "digest-size", 0, "template digest size in bytes; needed for binary_runtime_measurements_tpm_alg_<hex> lists (default: the bank's size)")
	fs.BoolVar(&f.allowTruncated, "allow-truncated", false, "accept a partial last entry (a live list that is still growing) and report its size instead of failing")
}

// entrySource is an open list.
type entrySource struct {
	replay.EntryReader
	name  string
	ascii bool
	// rereadable: opening name again reads the list from its start, as
	// for a regular file; a pipe or FIFO is drained or blocks instead.
	rereadable bool
	pending    func() int
	close      func() error
}

// openList opens FILE ("-" for standard input, empty for the live
// securityfs list) as a binary or ASCII list.
func openList(path string, f *listFlags, stdin io.Reader) (*entrySource, error) {
	opts := imalog.Options{DigestSize: f.digestSize, AllowTruncated: f.allowTruncated}
	order, err := imalog.ParseByteOrder(f.byteOrder)
	if err != nil {
		return nil, fmt.Errorf("%w: --byte-order: %v", errUsage, err)
	}
	opts.ByteOrder = order

	var bank pcr.Alg
	if f.bank != "" {
		bank, err = pcr.ParseAlg(f.bank)
		if err != nil {
			return nil, fmt.Errorf("%w: --bank: %v", errUsage, err)
		}
	}
	ascii := false
	if path == "" {
		live, liveOpts, err := imalog.LiveList(bank)
		if err != nil {
			return nil, err
		}
		path, opts.DigestAlg = live, liveOpts.DigestAlg
	} else {
		if info, ok := imalog.InfoFromFileName(path); ok {
			opts.DigestAlg = info.Options.DigestAlg
			ascii = info.ASCII
		}
		if bank != 0 {
			opts.DigestAlg = bank
		}
	}

	var r io.Reader = stdin
	closeFn := func() error { return nil }
	rereadable := false
	if path != "-" {
		file, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("open measurement list: %w", err)
		}
		r, closeFn = file, file.Close
		if info, err := file.Stat(); err == nil && info.Mode().IsRegular() {
			rereadable = true
		}
	}
	br := bufio.NewReaderSize(r, 64<<10)

	switch f.format {
	case "auto":
		if _, ok := imalog.InfoFromFileName(path); !ok {
			ascii = looksLikeASCII(br)
		}
	case "ascii":
		ascii = true
	case "binary":
		ascii = false
	default:
		closeFn()
		return nil, fmt.Errorf("%w: --format %q: use binary, ascii or auto", errUsage, f.format)
	}

	src := &entrySource{name: path, ascii: ascii, rereadable: rereadable, close: closeFn}
	if ascii {
		ar := imalog.NewASCIIReader(br, opts)
		src.EntryReader, src.pending = ar, ar.Pending
	} else {
		rd := imalog.NewReader(br, opts)
		src.EntryReader, src.pending = rd, rd.Pending
	}
	slog.Debug("reading measurement list", "path", path, "ascii", ascii, "digest_alg", opts.DigestAlg.String())
	return src, nil
}

// looksLikeASCII reports whether the list starts like an ASCII list: a PCR
// index in decimal, optionally padded with a space, then a space.
func looksLikeASCII(br *bufio.Reader) bool {
	head, _ := br.Peek(4)
	head = bytes.TrimLeft(head, " ")
	i := 0
	for i < len(head) && head[i] >= '0' && head[i] <= '9' {
		i++
	}
	return i > 0 && i < len(head) && head[i] == ' '
}

func runLogShow(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("log show", "log show [FLAGS] [FILE]\n\nPrint the entries of an IMA measurement list (default: the live\n"+imalog.DefaultListPath+")\nin the kernel's ASCII format, with control bytes in names escaped as \\xNN.", stderr)
	var lf listFlags
	lf.register(fs)
	jsonOut := fs.Bool("json", false, "print one JSON object per entry with every decoded field")
	rawNames := fs.Bool("raw-names", false, "print names byte for byte, as the kernel does, even when that breaks lines")
	verify := fs.Bool("verify", true, "check each entry's template hash; mismatches are reported on standard error and make the exit status 1")
	files, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(files) > 1 {
		return fmt.Errorf("%w: log show takes at most one FILE", errUsage)
	}

	src, err := openList(firstOrEmpty(files), &lf, stdin)
	if err != nil {
		return err
	}
	defer src.close()

	out := bufio.NewWriterSize(stdout, 64<<10)
	defer out.Flush()
	enc := json.NewEncoder(out)
	var line []byte
	var mismatches int64
	for {
		e, err := src.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			out.Flush()
			return fmt.Errorf("%s: %w", src.name, err)
		}

		var verifyErr error
		if *verify {
			_, verifyErr = e.VerifyTemplateHash()
			if verifyErr != nil && !errors.Is(verifyErr, pcr.ErrUnsupportedAlg) {
				mismatches++
				fmt.Fprintf(stderr, "imashard: %s: %v\n", src.name, &imalog.EntryError{Index: e.Index, Offset: e.Offset, Err: verifyErr})
			}
		}

		if *jsonOut {
			if err := enc.Encode(newEntryJSON(e, verifyErr)); err != nil {
				return fmt.Errorf("write output: %w", err)
			}
			continue
		}
		if *rawNames {
			line = imalog.AppendASCII(line[:0], e)
		} else {
			line = imalog.AppendASCIIEscaped(line[:0], e)
		}
		if _, err := out.Write(line); err != nil {
			return fmt.Errorf("write output: %w", err)
		}
	}
	if pending := src.pending(); pending > 0 {
		fmt.Fprintf(stderr, "imashard: %s: a partial last entry of %d bytes was left unread\n", src.name, pending)
	}
	if mismatches > 0 {
		return fmt.Errorf("%w: %d entries of %s have a template hash mismatch", errCheckFailed, mismatches, src.name)
	}
	return nil
}

type fieldJSON struct {
	ID        string         `json:"id,omitempty"`
	Data      string         `json:"data"`
	Digest    *digestJSON    `json:"digest,omitempty"`
	Name      *string        `json:"name,omitempty"`
	NameHex   string         `json:"name_hex,omitempty"`
	Signature *signatureJSON `json:"signature,omitempty"`
	Uint      *uint64        `json:"uint,omitempty"`
	Lengths   []uint32       `json:"lengths,omitempty"`
	Problem   string         `json:"problem,omitempty"`
}

type digestJSON struct {
	Type   string `json:"type,omitempty"`
	Algo   string `json:"algo,omitempty"`
	Digest string `json:"digest"`
}

type signatureJSON struct {
	Type      uint8  `json:"type"`
	Version   uint8  `json:"version"`
	HashAlgo  uint8  `json:"hash_algo"`
	KeyID     string `json:"keyid"`
	SigSize   uint16 `json:"sig_size"`
	Signature string `json:"signature"`
}

type entryJSON struct {
	Index          int64       `json:"index"`
	Offset         int64       `json:"offset"`
	PCR            uint32      `json:"pcr"`
	DigestAlg      string      `json:"template_digest_alg"`
	TemplateDigest string      `json:"template_digest"`
	TemplateName   string      `json:"template_name"`
	TemplateData   string      `json:"template_data"`
	Violation      bool        `json:"violation"`
	TemplateHashOK *bool       `json:"template_hash_ok,omitempty"`
	Error          string      `json:"error,omitempty"`
	UnknownFormat  bool        `json:"unknown_template,omitempty"`
	Fields         []fieldJSON `json:"fields"`
}

func newEntryJSON(e *imalog.Entry, verifyErr error) entryJSON {
	alg := e.DigestAlg
	if alg == 0 {
		alg = pcr.SHA1
	}
	out := entryJSON{
		Index: e.Index, Offset: e.Offset, PCR: e.PCR,
		DigestAlg:      alg.String(),
		TemplateDigest: hex.EncodeToString(e.TemplateDigest),
		TemplateName:   e.TemplateName,
		TemplateData:   hex.EncodeToString(e.TemplateData),
		Violation:      e.IsViolation(),
		Fields:         []fieldJSON{},
	}
	if !e.IsViolation() && !errors.Is(verifyErr, pcr.ErrUnsupportedAlg) {
		ok := verifyErr == nil
		out.TemplateHashOK = &ok
	}

	tmpl, err := e.ParseTemplate()
	if err != nil {
		out.Error = err.Error()
	}
	if tmpl == nil {
		return out
	}
	out.UnknownFormat = tmpl.Unknown
	for _, f := range tmpl.Fields {
		fj := fieldJSON{ID: f.ID, Data: hex.EncodeToString(f.Data), Problem: f.Problem, Lengths: f.Lengths}
		if f.Digest != nil {
			fj.Digest = &digestJSON{Type: f.Digest.Type, Algo: f.Digest.Algo, Digest: hex.EncodeToString(f.Digest.Digest)}
		}
		if f.Name != nil {
			name := string(imalog.AppendEscapedName(nil, f.Name))
			fj.Name, fj.NameHex = &name, hex.EncodeToString(f.Name)
		}
		if s := f.Signature; s != nil {
			fj.Signature = &signatureJSON{Type: s.Type, Version: s.Version, HashAlgo: s.HashAlgo,
				KeyID: fmt.Sprintf("%08x", s.KeyID), SigSize: s.SigSize, Signature: hex.EncodeToString(s.Signature)}
		}
		switch f.ID {
		case "iuid", "igid", "imode":
			if f.Problem == "" {
				value := f.Uint
				fj.Uint = &value
			}
		}
		out.Fields = append(out.Fields, fj)
	}
	return out
}

func firstOrEmpty(list []string) string {
	if len(list) == 0 {
		return ""
	}
	return list[0]
}

// pcrFileList collects repeated --pcrs flags.
type pcrFileList []string

func (p *pcrFileList) String() string     { return strings.Join(*p, " ") }
func (p *pcrFileList) Set(v string) error { *p = append(*p, v); return nil }

func runLogReplay(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("log replay", "log replay [FLAGS] [FILE]\n\nReplay an IMA measurement list (default: the live "+imalog.DefaultListPath+")\ninto PCR values. With --pcrs or --tpm, find the shortest prefix of the list that replays\nto those values (the list is usually ahead of a PCR read or quote) and report\nthe rule each bank followed. A regular FILE is replayed under the per-bank rule first and\nread again under both rules only when no prefix matches (kernels before 5.8, and banks the\nkernel cannot hash, extend the padded SHA-1 digest). Standard input, pipes and FIFOs are\nread once, under both rules. Exit status 0 only when every check matches.", stderr)
	var lf listFlags
	lf.register(fs)
	var targets pcrFileList
	fs.Var(&targets, "pcrs", "PCR values to match: a sysfs directory or file (/sys/class/tpm/tpm0, .../pcr-sha256/10), tpm2_pcrread output, or evmctl-style \"PCR-NN: hex\" lines as [ALG,]FILE; repeat for more banks")
	from := fs.String("from", "", "start state: PCR values in any --pcrs format (default: all zero, as after a TPM reset)")
	banksFlag := fs.String("banks", "", "comma-separated banks to replay (default: the banks of --pcrs and --from, else sha1,sha256)")
	jsonOut := fs.Bool("json", false, "print the report as JSON")
	tpmSpec := fs.String("tpm", "", "read the PCR values to match from this TPM, before reading the list (default: none): "+tpmFlagHelp)
	pcrList := fs.String("pcr", "10", "PCR indexes to match, from --pcrs files and --tpm: a comma-separated list of indexes and ranges such as 10,11; other PCRs in the files are ignored")
	files, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(files) > 1 {
		return fmt.Errorf("%w: log replay takes at most one FILE", errUsage)
	}

	indexes, err := parsePCRList(*pcrList)
	if err != nil {
		return err
	}
	target := pcr.Values{}
	for _, path := range targets {
		v, err := pcr.ReadValuesFile(path)
		if err != nil {
			return fmt.Errorf("--pcrs: %w", err)
		}
		// Firmware owns PCRs 0-9, so a whole sysfs directory or
		// tpm2_pcrread dump would never match without this filter.
		selected := selectIndexes(v, indexes)
		if len(selected) == 0 {
			return fmt.Errorf("--pcrs %s: no values for PCR %s: check the file or set --pcr", path, *pcrList)
		}
		mergeValues(target, selected)
	}
	if *tpmSpec != "" {
		v, err := readTPMTarget(*tpmSpec, indexes, *banksFlag)
		if err != nil {
			return err
		}
		mergeValues(target, v)
	}
	start := pcr.Values{}
	if *from != "" {
		v, err := pcr.ReadValuesFile(*from)
		if err != nil {
			return fmt.Errorf("--from: %w", err)
		}
		start = v
	}

	banks, err := pcr.ParseAlgList(*banksFlag)
	if err != nil {
		return fmt.Errorf("%w: --banks: %v", errUsage, err)
	}
	if len(banks) == 0 {
		banks = append(target.Banks(), start.Banks()...)
	}
	if len(banks) == 0 {
		banks = []pcr.Alg{pcr.SHA1, pcr.SHA256}
	}
	replayer, err := replay.New(start, banks)
	if err != nil {
		return err
	}

	path := firstOrEmpty(files)
	src, err := openList(path, &lf, stdin)
	if err != nil {
		return err
	}
	defer func() { src.close() }()

	// A list that can be read twice lets replay try the per-bank rule
	// alone first; standard input, pipes and FIFOs can be read once only.
	report := replayReport{List: src.name}
	var result *replay.Result
	if !src.rereadable {
		result, err = replay.ReplayAll(src, replayer, target)
	} else {
		opened := false
		result, err = replay.ReplayAllReopen(func() (replay.EntryReader, error) {
			// The reader itself, not src, so that replay can see that a
			// binary reader reads into reused storage.
			if !opened {
				opened = true
				return src.EntryReader, nil
			}
			if err := src.close(); err != nil {
				slog.Warn("close the measurement list before reading it again", "list", src.name, "err", err)
			}
			next, err := openList(path, &lf, stdin)
			if err != nil {
				src = &entrySource{name: src.name, pending: func() int { return 0 }, close: func() error { return nil }}
				return nil, err
			}
			src = next
			return src.EntryReader, nil
		}, replayer, target)
	}
	switch {
	case errors.Is(err, replay.ErrNoPrefixMatch):
		report.NoMatch = err.Error()
	case err != nil:
		return fmt.Errorf("%s: %w", src.name, err)
	case result.Prefix != nil:
		report.Matched = true
		report.MatchedEntries = result.Prefix.Entries
		report.Rules = map[string]string{}
		for alg, rule := range result.Prefix.Rules {
			report.Rules[alg.String()] = rule.String()
		}
		report.rules = result.Prefix.Rules
	}

	report.fill(replayer, src.pending())
	if *jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(report); err != nil {
			return fmt.Errorf("write output: %w", err)
		}
	} else {
		report.writeText(stdout)
	}

	switch {
	case report.NoMatch != "":
		return fmt.Errorf("%w: %s", errCheckFailed, report.NoMatch)
	case report.Mismatches > 0:
		return fmt.Errorf("%w: %d template hash mismatches in %s", errCheckFailed, report.Mismatches, src.name)
	}
	return nil
}

// readTPMTarget reads PCR values from the TPM at spec, in the banks of
// banksFlag or else in every allocated bank that replay supports.
func readTPMTarget(spec string, indexes []int, banksFlag string) (pcr.Values, error) {
	t, err := tpm.Open(spec)
	if err != nil {
		return nil, err
	}
	defer t.Close()

	var banks []pcr.Alg
	if banksFlag != "" {
		if banks, err = pcr.ParseAlgList(banksFlag); err != nil {
			return nil, fmt.Errorf("%w: --banks: %v", errUsage, err)
		}
	} else {
		allocated, err := t.Banks()
		if err != nil {
			return nil, err
		}
		for _, alg := range allocated {
			switch alg {
			case pcr.SHA1, pcr.SHA256, pcr.SHA384, pcr.SHA512:
				banks = append(banks, alg)
			default:
				slog.Warn("skipping a TPM bank that replay does not support", "bank", alg.String())
			}
		}
	}
	values, err := t.ReadPCRs(banks, indexes)
	if err != nil {
		return nil, fmt.Errorf("read PCRs from %s: %w", spec, err)
	}
	slog.Debug("read target PCR values from the TPM", "tpm", spec, "banks", fmt.Sprint(banks), "pcrs", fmt.Sprint(indexes))
	return values, nil
}

// selectIndexes returns the values of v at the given PCR indexes.
func selectIndexes(v pcr.Values, indexes []int) pcr.Values {
	out := pcr.Values{}
	for _, alg := range v.Banks() {
		for _, index := range indexes {
			if value, ok := v.Get(alg, index); ok {
				out.Set(alg, index, value)
			}
		}
	}
	return out
}

func mergeValues(dst, src pcr.Values) {
	for _, alg := range src.Banks() {
		for _, index := range src.Indexes(alg) {
			value, _ := src.Get(alg, index)
			dst.Set(alg, index, value)
		}
	}
}

type pcrJSON struct {
	Bank   string `json:"bank"`
	PCR    int    `json:"pcr"`
	Value  string `json:"value"`
	Rule   string `json:"rule,omitempty"`
	Padded string `json:"padded_sha1_value,omitempty"`
}

type replayReport struct {
	List           string            `json:"list"`
	Entries        int64             `json:"entries"`
	Violations     int64             `json:"violations"`
	Mismatches     int64             `json:"template_hash_mismatches"`
	MismatchErrors []string          `json:"mismatch_errors,omitempty"`
	PendingBytes   int               `json:"pending_bytes,omitempty"`
	Matched        bool              `json:"matched"`
	MatchedEntries int64             `json:"matched_entries"`
	NoMatch        string            `json:"no_match,omitempty"`
	Rules          map[string]string `json:"rules,omitempty"`
	PCRs           []pcrJSON         `json:"pcrs"`

	rules map[pcr.Alg]replay.Rule
}

func (rep *replayReport) fill(r *replay.Replayer, pending int) {
	rep.Entries, rep.Violations, rep.PendingBytes = r.Entries(), r.Violations(), pending
	var errs []error
	rep.Mismatches, errs = r.Mismatches()
	for _, err := range errs {
		rep.MismatchErrors = append(rep.MismatchErrors, err.Error())
	}

	perBank, padded := r.Candidates()
	for _, alg := range perBank.Banks() {
		for _, index := range perBank.Indexes(alg) {
			p := pcrJSON{Bank: alg.String(), PCR: index}
			value, _ := perBank.Get(alg, index)
			paddedValue, _ := padded.Get(alg, index)
			switch rule, ok := rep.rules[alg]; {
			case ok && rule == replay.RulePaddedSHA1:
				p.Value, p.Rule = hex.EncodeToString(paddedValue), rule.String()
			case ok:
				p.Value, p.Rule = hex.EncodeToString(value), rule.String()
			default:
				p.Value = hex.EncodeToString(value)
				if alg != pcr.SHA1 {
					p.Padded = hex.EncodeToString(paddedValue)
				}
			}
			rep.PCRs = append(rep.PCRs, p)
		}
	}
}

func (rep *replayReport) writeText(w io.Writer) {
	fmt.Fprintf(w, "list: %s\n", rep.List)
	fmt.Fprintf(w, "entries: %d (violations: %d, template hash mismatches: %d)\n", rep.Entries, rep.Violations, rep.Mismatches)
	if rep.PendingBytes > 0 {
		fmt.Fprintf(w, "partial last entry: %d bytes left unread\n", rep.PendingBytes)
	}
	for _, e := range rep.MismatchErrors {
		fmt.Fprintf(w, "mismatch: %s\n", e)
	}
	switch {
	case rep.Matched:
		fmt.Fprintf(w, "match: the first %d entries replay to the PCR values; %d entries follow\n", rep.MatchedEntries, rep.Entries-rep.MatchedEntries)
	case rep.NoMatch != "":
		fmt.Fprintf(w, "match: none: %s\n", rep.NoMatch)
	}
	fmt.Fprintln(w, "final values (after every entry):")
	for _, p := range rep.PCRs {
		switch {
		case p.Rule != "":
			fmt.Fprintf(w, "  %-6s PCR %2d: %s (rule %s)\n", p.Bank, p.PCR, p.Value, p.Rule)
		case p.Padded != "":
			fmt.Fprintf(w, "  %-6s PCR %2d: %s (per-bank)\n", p.Bank, p.PCR, p.Value)
			fmt.Fprintf(w, "  %-6s PCR %2d: %s (padded-sha1)\n", p.Bank, p.PCR, p.Padded)
		default:
			fmt.Fprintf(w, "  %-6s PCR %2d: %s\n", p.Bank, p.PCR, p.Value)
		}
	}
}
