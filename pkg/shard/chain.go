package shard

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"

	"github.com/imashard/imashard/pkg/imalog"
	"github.com/imashard/imashard/pkg/pcr"
	"github.com/imashard/imashard/pkg/replay"
	"github.com/imashard/imashard/pkg/tpm"
)

// DefaultLogPath is the kernel's legacy SHA-1 binary measurement list.
const DefaultLogPath = "/sys/kernel/security/ima/binary_runtime_measurements"

// bootIDPath changes at every boot, including a kexec.
const bootIDPath = "/proc/sys/kernel/random/boot_id"

// maxQuotedPCR is the highest PCR index a TPM has. Entries for higher
// indexes appear in logs but are never extended into a TPM.
const maxQuotedPCR = 23

// chainEnd is the state at the end of a chain: the position, PCR values and
// quote fields that the next shard continues from.
type chainEnd struct {
	Sequence   uint64 // sequence of the last shard
	File       string
	Digest     []byte     // SHA-256 of the last shard file
	EndIndex   int64      // history index right after its entries and tail
	Values     pcr.Values // its end values replayed through its tail
	Rules      map[pcr.Alg]replay.Rule
	Source     LogSource
	BootID     string
	BootFirst  int64 // history index of the first entry of the live list in BootID
	ResetCount uint32
	Clock      uint64
	Tail       Section // the last shard's tail, which the live list must repeat

	// The last shard's quote and what it signs, for checkQuote.
	AKPublic       []byte
	Quote          *tpm.Quote
	QualifyingData []byte
	Quoted         pcr.Values
}

// checkQuote verifies the last shard's quote with ak. A snapshot runs it
// before linking a new shard, because a shard linked to a corrupt or foreign
// predecessor can never verify.
func (e *chainEnd) checkQuote(ak crypto.PublicKey) error {
	key, _, err := tpm.ParseAKPublic(e.AKPublic)
	if err != nil {
		return fmt.Errorf("shard %s: %w: AK public area: %v", e.File, ErrMalformed, err)
	}
	own, ok := ak.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !own.Equal(key) {
		return fmt.Errorf("shard %s: %w: its AK differs from the AK of this snapshot", e.File, ErrWrongAK)
	}

	if _, err := tpm.VerifyQuote(ak, e.Quote, e.QualifyingData, e.Quoted); err != nil {
		return fmt.Errorf("shard %s: quote does not verify: %w", e.File, err)
	}
	return nil
}

func rulesFromNames(names map[pcr.Alg]string) map[pcr.Alg]replay.Rule {
	rules := make(map[pcr.Alg]replay.Rule, len(names))
	for alg, name := range names {
		if name == RuleNamePaddedSHA1 {
			rules[alg] = replay.RulePaddedSHA1
		} else {
			rules[alg] = replay.RulePerBank
		}
	}
	return rules
}

func rulesToNames(rules map[pcr.Alg]replay.Rule) map[pcr.Alg]string {
	names := make(map[pcr.Alg]string, len(rules))
	for alg, rule := range rules {
		// SHA-1 banks give the same value under both rules, so the name
		// is fixed to keep headers of equal shards identical.
		if rule == replay.RulePaddedSHA1 && alg != pcr.SHA1 {
			names[alg] = RuleNamePaddedSHA1
		} else {
			names[alg] = RuleNamePerBank
		}
	}
	return names
}

func (s LogSource) readerOptions() imalog.Options {
	order := imalog.LittleEndian
	if s.BigEndian {
		order = imalog.BigEndian
	}
	return imalog.Options{DigestAlg: s.DigestAlg, DigestSize: s.DigestSize, ByteOrder: order}
}

// replaySection replays the entries of r (a section of a shard file) on top
// of rp and checks that the section holds exactly count whole entries.
func replaySection(rp *replay.Replayer, r io.Reader, src LogSource, count int64, section string) error {
	reader := imalog.NewReader(r, src.readerOptions())
	var n int64
	for {
		e, err := reader.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("%w: %s entry %d: %v", ErrMalformed, section, n, err)
		}
		if n >= count {
			return fmt.Errorf("%w: %s contains more than the %d entries the header declares", ErrHeaderMismatch, section, count)
		}
		if err := rp.Extend(e); err != nil {
			return fmt.Errorf("%s entry %d at section offset %d: %w", section, n, e.Offset, err)
		}
		n++
	}
	if n != count {
		return fmt.Errorf("%w: %s contains %d entries, the header declares %d", ErrHeaderMismatch, section, n, count)
	}
	return nil
}

// quotedValues returns the values of the PCRs a quote can cover.
func quotedValues(v pcr.Values) pcr.Values {
	out := pcr.Values{}
	for _, alg := range v.Banks() {
		for _, index := range v.Indexes(alg) {
			if index <= maxQuotedPCR {
				value, _ := v.Get(alg, index)
				out.Set(alg, index, value)
			}
		}
	}
	return out
}

func quotedIndexes(v pcr.Values) []int {
	var indexes []int
	for _, alg := range v.Banks() {
		for _, index := range v.Indexes(alg) {
			if index <= maxQuotedPCR {
				indexes = append(indexes, index)
			}
		}
	}
	slices.Sort(indexes)
	return slices.Compact(indexes)
}

// readChainEnd opens the last shard in dir and computes where the next shard
// starts. It checks the last shard's structure but not its quote: Verify
// does that for the whole chain. It returns nil for an empty directory.
func readChainEnd(dir string) (*chainEnd, error) {
	files, err := ListChain(dir)
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, nil
	}
	last := files[len(files)-1]
	if last.Sequence != uint64(len(files)-1) {
		return nil, fmt.Errorf("%w: %s is the last of %d shards but has sequence %d: run imashard verify on %s", ErrMissingShard, last.Path, len(files), last.Sequence, dir)
	}

	sf, err := Open(last.Path)
	if err != nil {
		return nil, err
	}
	defer sf.Close()
	h := sf.Header
	if h.Sequence != last.Sequence {
		return nil, fmt.Errorf("%w: header of %s records sequence %d", ErrReorder, last.Path, h.Sequence)
	}
	if err := sf.CheckSections(); err != nil {
		return nil, err
	}

	info, err := tpm.ParseQuote(&tpm.Quote{Attest: sf.Trailer.Attest, Signature: sf.Trailer.Signature})
	if err != nil {
		return nil, fmt.Errorf("shard %s: %w: %v", last.Path, ErrMalformed, err)
	}

	rules := rulesFromNames(h.Rules)
	rp, err := replay.New(h.End, h.End.Banks())
	if err != nil {
		return nil, fmt.Errorf("shard %s: %w", last.Path, err)
	}
	if err := replaySection(rp, sf.TailEntries(), h.Source, h.Tail.Count, "tail"); err != nil {
		return nil, fmt.Errorf("shard %s: %w", last.Path, err)
	}
	digest, err := sf.Digest()
	if err != nil {
		return nil, err
	}
	qualifyingData := sha256.Sum256(sf.HeaderBytes)

	return &chainEnd{
		Sequence:   h.Sequence,
		File:       last.Path,
		Digest:     digest,
		EndIndex:   h.EndIndex(),
		Values:     rp.Values(rules),
		Rules:      rules,
		Source:     h.Source,
		BootID:     h.BootID,
		BootFirst:  h.BootFirstIndex,
		ResetCount: info.ResetCount,
		Clock:      info.Clock,
		Tail:       h.Tail,

		AKPublic:       h.AKPublic,
		Quote:          &tpm.Quote{Attest: sf.Trailer.Attest, Signature: sf.Trailer.Signature},
		QualifyingData: qualifyingData[:],
		Quoted:         quotedValues(h.End),
	}, nil
}

// openList opens a measurement list. A missing default list means the
// kernel has no IMA or securityfs is not mounted, which gets its own error.
func openList(path string) (*os.File, error) {
	f, err := os.Open(path)
	if err == nil {
		return f, nil
	}
	if errors.Is(err, fs.ErrNotExist) && path == DefaultLogPath {
		return nil, fmt.Errorf("%w: %s not found: the kernel needs CONFIG_IMA=y (Linux 2.6.30 or later) and securityfs mounted at /sys/kernel/security (mount -t securityfs securityfs /sys/kernel/security), or pass --log FILE", ErrNoMeasurementList, path)
	}
	return nil, fmt.Errorf("open measurement list: %w", err)
}

// readBootID returns the kernel's boot ID, or override when it is set.
func readBootID(override string) (string, error) {
	if override != "" {
		return override, nil
	}
	data, err := os.ReadFile(bootIDPath)
	if err != nil {
		return "", fmt.Errorf("read boot ID (needs procfs mounted at /proc): %w", err)
	}
	return string(bytes.TrimSpace(data)), nil
}

// bootFirstIndex returns the history index of the first entry of the live
// list in the current boot.
func bootFirstIndex(end *chainEnd, bootID string) int64 {
	switch {
	case end == nil:
		return 0
	case end.BootID == bootID:
		return end.BootFirst
	default:
		// Kernels without CONFIG_IMA_KEXEC (Debian's) start an empty list at
		// kexec, so the new list begins where the chain ends. Callers that
		// know better, after a carried-over or trimmed list, pass
		// LiveFirstIndex instead (pkg/trim's Reconcile computes it).
		return end.EndIndex
	}
}

// sourceFor describes the list file at path as read with opts.
func sourceFor(path string, opts imalog.Options, order imalog.ByteOrder) LogSource {
	alg := opts.DigestAlg
	if alg == 0 {
		alg = pcr.SHA1
	}
	size := opts.DigestSize
	if size == 0 {
		size = alg.Size()
	}
	name := path
	if i := strings.LastIndexByte(path, '/'); i >= 0 {
		name = path[i+1:]
	}
	return LogSource{File: name, DigestAlg: alg, DigestSize: size, BigEndian: order == imalog.BigEndian}
}
