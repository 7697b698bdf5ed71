package replay

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/imashard/imashard/pkg/imalog"
	"github.com/imashard/imashard/pkg/pcr"
)

// EntryReader is a source of entries: *imalog.Reader or *imalog.ASCIIReader.
type EntryReader interface {
	Next() (*imalog.Entry, error)
}

// Prefix is the shortest prefix of a list that replays to the target.
type Prefix struct {
	// Entries is the number of entries in the prefix, counted from the
	// replayer's state when FindPrefix started.
	Entries int64
	// Last is the last entry of the prefix, nil for an empty prefix.
	Last  *imalog.Entry
	Rules map[pcr.Alg]Rule
}

type targetPCR struct {
	alg   pcr.Alg
	pos   int
	index uint32
	want  []byte
	first int64 // entries after which this PCR first matched alone, -1 if never
}

// FindPrefix extends r with entries until r matches target, checking before
// the first entry and after every entry, and returns the prefix. When the
// list ends first, it returns an error wrapping ErrNoPrefixMatch that names
// the banks and PCRs that never matched, and r then holds the whole list.
// Entries after the prefix are left unread in entries.
func FindPrefix(entries EntryReader, r *Replayer, target pcr.Values) (*Prefix, error) {
	targets, err := r.compileTarget(target)
	if err != nil {
		return nil, err
	}

	var (
		count          int64
		last           *imalog.Entry
		bootAggregates []int64
	)
	for {
		if rules, ok := r.Match(target); ok {
			return &Prefix{Entries: count, Last: last, Rules: rules}, nil
		}
		for i := range targets {
			t := &targets[i]
			if t.first < 0 && r.matchOne(t) {
				t.first = count
			}
		}

		e, err := entries.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		if count > 0 && bytes.Contains(e.TemplateData, []byte("boot_aggregate")) {
			bootAggregates = append(bootAggregates, e.Index)
		}
		if err := r.Extend(e); err != nil {
			return nil, err
		}
		last = e
		count++
	}
	return nil, noMatchError(targets, count, bootAggregates)
}

func (r *Replayer) compileTarget(target pcr.Values) ([]targetPCR, error) {
	if len(target) == 0 {
		return nil, errors.New("no target PCR values to match")
	}
	var targets []targetPCR
	for _, alg := range target.Banks() {
		pos := slices.Index(r.banks, alg)
		if pos < 0 {
			return nil, fmt.Errorf("target contains the %s bank, which is not among the replayed banks %v: add it to the banks", alg, r.banks)
		}
		for _, index := range target.Indexes(alg) {
			want, _ := target.Get(alg, index)
			if index < 0 || len(want) != alg.Size() {
				return nil, fmt.Errorf("target %s PCR %d: value of %d bytes, expected %d", alg, index, len(want), alg.Size())
			}
			targets = append(targets, targetPCR{alg: alg, pos: pos, index: uint32(index), want: want, first: -1})
		}
	}
	return targets, nil
}

func (r *Replayer) matchOne(t *targetPCR) bool {
	return bytes.Equal(r.value(t.pos, t.alg, t.index, RulePerBank), t.want) ||
		bytes.Equal(r.value(t.pos, t.alg, t.index, RulePaddedSHA1), t.want)
}

func noMatchError(targets []targetPCR, count int64, bootAggregates []int64) error {
	var never, sometimes []string
	for _, t := range targets {
		name := fmt.Sprintf("%s PCR %d", t.alg, t.index)
		if t.first < 0 {
			never = append(never, name)
		} else {
			sometimes = append(sometimes, fmt.Sprintf("%s (after %d entries)", name, t.first))
		}
	}

	var b strings.Builder
	fmt.Fprintf(&b, "%v after any of the %d entries", ErrNoPrefixMatch, count)
	if len(never) > 0 {
		fmt.Fprintf(&b, "; never matched under either rule: %s", strings.Join(never, ", "))
	}
	if len(sometimes) > 0 {
		fmt.Fprintf(&b, "; matched alone but never together with the rest: %s", strings.Join(sometimes, ", "))
	}
	if len(bootAggregates) > 0 {
		fmt.Fprintf(&b, "; a boot_aggregate entry at index %d suggests a kexec whose entries between load and execute were lost", bootAggregates[0])
	}
	b.WriteString("; check the start state and that the PCR values were read before the list")
	return &noMatch{msg: b.String()}
}

type noMatch struct{ msg string }

func (e *noMatch) Error() string { return e.msg }
func (e *noMatch) Unwrap() error { return ErrNoPrefixMatch }
