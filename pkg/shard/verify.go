package shard

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/imashard/imashard/pkg/imalog"
	"github.com/imashard/imashard/pkg/pcr"
	"github.com/imashard/imashard/pkg/replay"
	"github.com/imashard/imashard/pkg/tpm"
)

// LiveOptions selects the TPM and log for a live check after the chain.
type LiveOptions struct {
	TPM        *tpm.TPM
	AK         *tpm.AK // AK in TPM that signs the fresh quote; its public key must equal the pinned AK
	LogPath    string  // "" means DefaultLogPath
	LogOptions imalog.Options
	BootID     string // "" means the kernel's boot ID

	// LiveFirstIndex is the history index of LogPath's first entry; nil
	// derives it from the boot ID (see SnapshotOptions.LiveFirstIndex).
	LiveFirstIndex *int64

	// OpenLog, when set, opens the list in place of LogPath (see
	// SnapshotOptions.OpenLog).
	OpenLog func() (io.ReadCloser, error)
}

// VerifyOptions configures Verify.
type VerifyOptions struct {
	Dir          string
	AKPublic     crypto.PublicKey // the pinned AK; every shard's AK must equal it
	TrustedStart pcr.Values       // nil means the TPM reset state (all zero)
	Live         *LiveOptions     // nil means verify the chain only
}

// Check is one verification step and its outcome.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

// ShardReport lists what was checked for one shard file.
type ShardReport struct {
	File        string            `json:"file"`
	Sequence    uint64            `json:"sequence"`
	FirstIndex  int64             `json:"first_index"`
	Entries     int64             `json:"entries"`
	TailEntries int64             `json:"tail_entries"`
	Rules       map[string]string `json:"rules,omitempty"` // bank -> rule the entries replay with
	ResetCount  uint32            `json:"reset_count"`
	Clock       uint64            `json:"clock_ms"`
	Checks      []Check           `json:"checks"`
	OK          bool              `json:"ok"`
}

// State is a verified position in the machine's measurement history.
type State struct {
	NextIndex int64                        `json:"next_index"` // history index of the first entry not yet verified
	Values    map[string]map[string]string `json:"pcrs"`       // bank -> PCR index -> hex value
}

// LiveReport is the outcome of the fresh quote and the live log replay.
type LiveReport struct {
	Attested int64   `json:"attested_entries"` // live entries after the chain end that the fresh quote covers
	Pending  int64   `json:"pending_entries"`  // live entries past the quoted state
	Checks   []Check `json:"checks"`
	State    *State  `json:"state,omitempty"`
	OK       bool    `json:"ok"`
}

// Report is the result of Verify. OK is true only when every check passed.
type Report struct {
	Dir    string        `json:"dir"`
	Shards []ShardReport `json:"shards"`
	Final  *State        `json:"final,omitempty"` // state after the last shard and its tail
	Live   *LiveReport   `json:"live,omitempty"`
	OK     bool          `json:"ok"`
	Error  string        `json:"error,omitempty"`
}

func stateOf(next int64, v pcr.Values) *State {
	s := &State{NextIndex: next, Values: map[string]map[string]string{}}
	for _, alg := range v.Banks() {
		bank := map[string]string{}
		for _, index := range v.Indexes(alg) {
			value, _ := v.Get(alg, index)
			bank[strconv.Itoa(index)] = hex.EncodeToString(value)
		}
		s.Values[alg.String()] = bank
	}
	return s
}

// Verify checks every shard in opts.Dir against the pinned AK and the chain
// rules, and with opts.Live also the live log against a fresh quote. It
// returns the report and, when a check failed, an error that wraps the
// matching sentinel and names the shard file. It stops at the first failure
// because later shards build on the state that failed.
func Verify(ctx context.Context, opts VerifyOptions) (*Report, error) {
	report := &Report{Dir: opts.Dir}
	err := verifyChain(ctx, opts, report)
	if err == nil && opts.Live != nil {
		err = verifyLive(ctx, opts, report)
	}
	if err != nil {
		report.Error = err.Error()
		return report, err
	}
	report.OK = true
	return report, nil
}

// verifier carries the chain state from one shard to the next.
type verifier struct {
	opts   VerifyOptions
	report *Report
	prev   *chainEnd
}

func verifyChain(ctx context.Context, opts VerifyOptions, report *Report) error {
	if opts.AKPublic == nil {
		return errors.New("verify: pinned AK public key is required")
	}
	files, err := ListChain(opts.Dir)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	if len(files) == 0 {
		return fmt.Errorf("verify: %w: no shard-*.ims files in %s", ErrMissingShard, opts.Dir)
	}
	if err := checkNames(files); err != nil {
		return err
	}

	v := &verifier{opts: opts, report: report}
	for _, cf := range files {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := v.verifyShard(cf); err != nil {
			return err
		}
	}
	report.Final = stateOf(v.prev.EndIndex, v.prev.Values)
	return nil
}

// checkNames finds missing and duplicated sequence numbers in the file
// names before any file is read, so the error names the real cause.
func checkNames(files []ChainFile) error {
	for i, cf := range files {
		if i > 0 && cf.Sequence == files[i-1].Sequence {
			return fmt.Errorf("verify: %w: %s and %s have sequence %d", ErrDuplicate, files[i-1].Path, cf.Path, cf.Sequence)
		}
		if cf.Sequence != uint64(i) {
			return fmt.Errorf("verify: %w: shard %d missing, next file is %s: restore it from a backup; the chain cannot be verified without it", ErrMissingShard, i, cf.Path)
		}
	}
	return nil
}

func (v *verifier) fail(sr *ShardReport, name string, err error) error {
	sr.Checks = append(sr.Checks, Check{Name: name, OK: false, Detail: err.Error()})
	v.report.Shards = append(v.report.Shards, *sr)
	return fmt.Errorf("verify: shard %s: %w", sr.File, err)
}

func (v *verifier) pass(sr *ShardReport, name, detail string) {
	sr.Checks = append(sr.Checks, Check{Name: name, OK: true, Detail: detail})
}

func (v *verifier) verifyShard(cf ChainFile) error {
	sr := &ShardReport{File: cf.Path, Sequence: cf.Sequence}

	// fail names the file, so the decode error must not name it again as
	// Open's does.
	f, err := os.Open(cf.Path)
	if err != nil {
		return v.fail(sr, "decode", err)
	}
	sf, err := decodeFile(f, cf.Path)
	if err != nil {
		f.Close()
		return v.fail(sr, "decode", err)
	}
	defer sf.Close()
	h := sf.Header
	sr.FirstIndex, sr.Entries, sr.TailEntries = h.FirstIndex, h.Entries.Count, h.Tail.Count
	v.pass(sr, "decode", fmt.Sprintf("format version %d", h.Version))

	if err := v.checkPlace(sf); err != nil {
		return v.fail(sr, "sequence", err)
	}
	v.pass(sr, "sequence", fmt.Sprintf("sequence %d", h.Sequence))

	info, err := v.checkQuote(sf)
	if err != nil {
		name := "quote"
		if errors.Is(err, ErrWrongAK) {
			name = "ak"
		}
		return v.fail(sr, name, err)
	}
	sr.ResetCount, sr.Clock = info.ResetCount, info.Clock
	v.pass(sr, "quote", "signature, AK, qualifying data and pcrDigest")

	if err := v.checkLinks(sf, info); err != nil {
		return v.fail(sr, "chain", err)
	}
	v.pass(sr, "chain", "start values, previous-shard digest, entry index, resetCount, clock")

	rules := rulesFromNames(h.Rules)
	afterTail, err := v.replayShard(sf, rules)
	if err != nil {
		return v.fail(sr, "replay", err)
	}
	sr.Rules = map[string]string{}
	for alg, name := range h.Rules {
		sr.Rules[alg.String()] = name
	}
	v.pass(sr, "replay", fmt.Sprintf("%d entries replay to the quoted values, %d tail entries replayed", h.Entries.Count, h.Tail.Count))

	digest, err := sf.Digest()
	if err != nil {
		return v.fail(sr, "digest", err)
	}

	sr.OK = true
	v.report.Shards = append(v.report.Shards, *sr)
	v.prev = &chainEnd{
		Sequence:   h.Sequence,
		File:       cf.Path,
		Digest:     digest,
		EndIndex:   h.EndIndex(),
		Values:     afterTail,
		Rules:      rules,
		Source:     h.Source,
		BootID:     h.BootID,
		BootFirst:  h.BootFirstIndex,
		ResetCount: info.ResetCount,
		Clock:      info.Clock,
		Tail:       h.Tail,
	}
	return nil
}

// checkPlace compares the sequence in the header, which the quote covers,
// with the file name, which anyone can change.
func (v *verifier) checkPlace(sf *File) error {
	h := sf.Header
	want := uint64(0)
	if v.prev != nil {
		want = v.prev.Sequence + 1
	}
	switch {
	case v.prev != nil && h.Sequence == v.prev.Sequence:
		return fmt.Errorf("%w: header records sequence %d, the same as %s", ErrDuplicate, h.Sequence, v.prev.File)
	case v.prev != nil && h.Sequence < v.prev.Sequence:
		return fmt.Errorf("%w: header records sequence %d after %s with sequence %d", ErrDuplicate, h.Sequence, v.prev.File, v.prev.Sequence)
	case h.Sequence != want:
		return fmt.Errorf("%w: file name has sequence %d but the header records %d: the file was renamed", ErrReorder, want, h.Sequence)
	}
	return nil
}

func (v *verifier) checkQuote(sf *File) (*tpm.QuoteInfo, error) {
	h := sf.Header
	key, _, err := tpm.ParseAKPublic(h.AKPublic)
	if err != nil {
		return nil, fmt.Errorf("%w: AK public area: %v", ErrMalformed, err)
	}
	pinned, ok := v.opts.AKPublic.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pinned.Equal(key) {
		return nil, fmt.Errorf("%w: the AK in the shard differs from the pinned AK", ErrWrongAK)
	}

	nonce := sha256.Sum256(sf.HeaderBytes)
	q := &tpm.Quote{Attest: sf.Trailer.Attest, Signature: sf.Trailer.Signature}
	info, err := tpm.VerifyQuote(v.opts.AKPublic, q, nonce[:], quotedValues(h.End))
	switch {
	case err == nil:
	case errors.Is(err, tpm.ErrBadSignature):
		return nil, fmt.Errorf("%w: %w", ErrBadSignature, err)
	case errors.Is(err, tpm.ErrNonceMismatch):
		return nil, fmt.Errorf("%w: qualifying data is not the SHA-256 of this header: %w", ErrHeaderMismatch, err)
	case errors.Is(err, tpm.ErrPCRDigestMismatch), errors.Is(err, tpm.ErrMissingPCRValue):
		return nil, fmt.Errorf("%w: recorded end values: %w", ErrHeaderMismatch, err)
	default:
		return nil, fmt.Errorf("%w: quote: %w", ErrMalformed, err)
	}

	// The quote must cover every recorded quotable end value, or a value
	// outside its selection would go unauthenticated.
	covered := 0
	for alg, indexes := range info.Selection {
		covered += len(indexes)
		for _, index := range indexes {
			if _, ok := h.End.Get(alg, index); !ok {
				return nil, fmt.Errorf("%w: quote selects %s PCR %d, which the header lacks", ErrHeaderMismatch, alg, index)
			}
		}
	}
	if n := countValues(quotedValues(h.End)); covered != n {
		return nil, fmt.Errorf("%w: quote selects %d PCRs, the header records %d end values", ErrHeaderMismatch, covered, n)
	}
	return info, nil
}

func countValues(v pcr.Values) int {
	n := 0
	for _, alg := range v.Banks() {
		n += len(v.Indexes(alg))
	}
	return n
}

func (v *verifier) checkLinks(sf *File, info *tpm.QuoteInfo) error {
	h := sf.Header
	if v.prev == nil {
		return v.checkFirstStart(h)
	}

	p := v.prev
	if !bytes.Equal(h.Previous, p.Digest) {
		return fmt.Errorf("%w: previous-shard digest %x, but %s hashes to %x", ErrHeaderMismatch, h.Previous, p.File, p.Digest)
	}
	switch {
	case h.FirstIndex > p.EndIndex:
		return fmt.Errorf("%w: first entry has history index %d, the previous shard ends at %d", ErrGap, h.FirstIndex, p.EndIndex)
	case h.FirstIndex < p.EndIndex:
		return fmt.Errorf("%w: first entry has history index %d, the previous shard already covers up to %d", ErrDuplicate, h.FirstIndex, p.EndIndex)
	}
	if info.ResetCount != p.ResetCount {
		return fmt.Errorf("%w: quote resetCount %d, previous shard %d: the platform was reset, so a new chain must start", ErrResetDetected, info.ResetCount, p.ResetCount)
	}
	if info.Clock < p.Clock {
		return fmt.Errorf("%w: TPM clock %d ms is before the previous shard's %d ms", ErrReorder, info.Clock, p.Clock)
	}
	if err := startMatches(h.Start, p.Values); err != nil {
		return fmt.Errorf("%w: start values differ from the previous shard's end after its tail: %v", ErrReplayMismatch, err)
	}
	return nil
}

// startMatches compares a shard's start with the state it must continue
// from. A PCR the previous shard did not record starts at zero.
func startMatches(start, prev pcr.Values) error {
	want := prev.Clone()
	for _, alg := range start.Banks() {
		for _, index := range start.Indexes(alg) {
			if _, ok := want.Get(alg, index); !ok {
				want.Set(alg, index, pcr.Zero(alg))
			}
		}
	}
	return start.Diff(want)
}

func (v *verifier) checkFirstStart(h *Header) error {
	if h.FirstIndex != 0 && v.opts.TrustedStart == nil {
		return fmt.Errorf("%w: first shard starts at history index %d, not at the TPM reset: pass the accepted starting state with --trusted-start", ErrGap, h.FirstIndex)
	}
	if v.opts.TrustedStart != nil {
		if err := startMatches(h.Start, v.opts.TrustedStart); err != nil {
			return fmt.Errorf("%w: start values differ from the trusted start: %v", ErrReplayMismatch, err)
		}
		return nil
	}
	for _, alg := range h.Start.Banks() {
		for _, index := range h.Start.Indexes(alg) {
			value, _ := h.Start.Get(alg, index)
			if !bytes.Equal(value, pcr.Zero(alg)) {
				return fmt.Errorf("%w: first shard starts with %s PCR %d = %x, not the TPM reset state: pass the accepted starting state with --trusted-start", ErrReplayMismatch, alg, index, value)
			}
		}
	}
	return nil
}

// replayShard streams the entry section through a replayer and compares the
// result with the quoted end values, then replays the tail. Both sections are
// hashed while streamed. It returns the values after the tail.
func (v *verifier) replayShard(sf *File, rules map[pcr.Alg]replay.Rule) (pcr.Values, error) {
	h := sf.Header
	for _, alg := range h.End.Banks() {
		if _, ok := rules[alg]; !ok {
			return nil, fmt.Errorf("%w: no replay rule recorded for bank %s", ErrHeaderMismatch, alg)
		}
	}
	rp, err := replay.New(h.Start, h.End.Banks())
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}

	if err := replayHashed(rp, sf.Entries(), h.Source, h.Entries, "entry section"); err != nil {
		return nil, err
	}
	got := quotedValues(rp.Values(rules))
	if err := got.Diff(quotedValues(h.End)); err != nil {
		return nil, fmt.Errorf("%w: after %d entries (history index %d to %d): replayed vs recorded: %v", ErrReplayMismatch, h.Entries.Count, h.FirstIndex, h.FirstIndex+h.Entries.Count-1, err)
	}

	if err := replayHashed(rp, sf.TailEntries(), h.Source, h.Tail, "tail section"); err != nil {
		return nil, err
	}
	return rp.Values(rules), nil
}

func replayHashed(rp *replay.Replayer, r io.Reader, src LogSource, want Section, section string) error {
	hash := sha256.New()
	counted := &countingReader{r: io.TeeReader(r, hash)}
	if err := replaySection(rp, counted, src, want.Count, section); err != nil {
		return err
	}
	// Drain what the log reader left, so the digest covers the whole section.
	if _, err := io.Copy(hash, counted); err != nil {
		return err
	}
	if counted.n != want.Size {
		return fmt.Errorf("%w: %s is %d bytes, the header records %d", ErrTruncated, section, counted.n, want.Size)
	}
	if got := hash.Sum(nil); !bytes.Equal(got, want.Digest) {
		return fmt.Errorf("%w: %s SHA-256 is %x, the header records %x", ErrHeaderMismatch, section, got, want.Digest)
	}
	return nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// verifyLive quotes the TPM over a random nonce and replays the live log
// from the chain end to the quoted values.
func verifyLive(ctx context.Context, opts VerifyOptions, report *Report) error {
	live := opts.Live
	lr := &LiveReport{}
	report.Live = lr
	fail := func(name string, err error) error {
		lr.Checks = append(lr.Checks, Check{Name: name, Detail: err.Error()})
		return fmt.Errorf("verify live: %w", err)
	}
	if live.TPM == nil || live.AK == nil {
		return fail("setup", errors.New("TPM and AK are required for the live check"))
	}
	logPath := live.LogPath
	if logPath == "" {
		logPath = DefaultLogPath
	}

	files, _ := ListChain(opts.Dir)
	end, err := readChainEnd(opts.Dir)
	if err != nil || end == nil || len(files) == 0 {
		return fail("chain", fmt.Errorf("read chain end: %v", err))
	}
	bootID, err := readBootID(live.BootID)
	if err != nil {
		return fail("boot", err)
	}
	bootFirst := bootFirstIndex(end, bootID)
	if live.LiveFirstIndex != nil {
		bootFirst = *live.LiveFirstIndex
	}

	nonce := make([]byte, 32)
	if _, err := rand.Read(nonce); err != nil {
		return fail("nonce", err)
	}
	indexes := quotedIndexes(end.Values)
	banks := end.Values.Banks()
	q, values, err := live.TPM.QuoteWithValues(live.AK, nonce, banks, indexes)
	if err != nil {
		return fail("quote", fmt.Errorf("fresh quote: %w", err))
	}
	info, err := tpm.VerifyQuote(opts.AKPublic, q, nonce, values)
	if err != nil {
		if errors.Is(err, tpm.ErrBadSignature) {
			return fail("quote", fmt.Errorf("%w: fresh quote not signed by the pinned AK: %w", ErrWrongAK, err))
		}
		return fail("quote", fmt.Errorf("fresh quote: %w", err))
	}
	if info.ResetCount != end.ResetCount {
		return fail("quote", fmt.Errorf("%w: TPM resetCount is %d, the chain ends at %d", ErrResetDetected, info.ResetCount, end.ResetCount))
	}
	lr.Checks = append(lr.Checks, Check{Name: "quote", OK: true, Detail: "fresh quote over a random nonce, signed by the pinned AK"})

	open := live.OpenLog
	if open == nil {
		open = func() (io.ReadCloser, error) { return openList(logPath) }
	}
	attested, total, err := matchLive(ctx, logPath, open, live.LogOptions, end, bootFirst, values)
	if err != nil {
		return fail("replay", err)
	}
	lr.Attested, lr.Pending = attested, total-attested
	lr.State = stateOf(end.EndIndex+attested, values)
	lr.Checks = append(lr.Checks, Check{Name: "replay", OK: true, Detail: fmt.Sprintf("%d live entries after the chain end replay to the fresh quote", attested)})
	lr.OK = true
	return nil
}

// matchLive replays the live list from the chain end and returns the length
// of the longest prefix that reaches values, and how many entries it read.
func matchLive(ctx context.Context, path string, open func() (io.ReadCloser, error), opts imalog.Options, end *chainEnd, bootFirst int64, values pcr.Values) (int64, int64, error) {
	f, err := open()
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	opts.AllowTruncated = true
	reader := imalog.NewReader(f, opts)

	start := end.Values.Clone()
	rp, err := replay.New(start, values.Banks())
	if err != nil {
		return 0, 0, err
	}
	skip := end.EndIndex - bootFirst
	best := int64(-1)
	if _, ok := rp.Match(values); ok {
		best = 0
	}
	var n, read int64
	for ; ; n++ {
		if n%4096 == 0 && ctx.Err() != nil {
			return 0, 0, ctx.Err()
		}
		e, err := reader.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, 0, fmt.Errorf("read %s: %w", path, err)
		}
		if n < skip {
			continue
		}
		if err := rp.Extend(e); err != nil {
			return 0, 0, fmt.Errorf("%s entry %d at offset %d: %w", path, n, e.Offset, err)
		}
		read++
		if _, ok := rp.Match(values); ok {
			best = read
		}
	}
	if n < skip {
		return 0, 0, fmt.Errorf("%w: %s has %d entries in this boot, the chain ends at entry %d of this boot", ErrNoPrefixMatch, path, n, skip)
	}
	if best < 0 {
		perBank, _ := rp.Candidates()
		return 0, 0, fmt.Errorf("%w: none of the %d live entries after history index %d reaches the fresh quote: %v", ErrNoPrefixMatch, read, end.EndIndex, values.Diff(perBank))
	}
	return best, read, nil
}
