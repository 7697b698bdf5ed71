package replay

import (
	"bytes"
	"errors"
	"io"

	"github.com/imashard/imashard/pkg/imalog"
	"github.com/imashard/imashard/pkg/pcr"
)

// batchSize is the number of entries handed between goroutines at once;
// large enough to make channel costs vanish, small enough to stay in cache.
const batchSize = 256

type hashedBatch struct {
	entries []hashedEntry
	err     error // the reader's error after these entries; io.EOF at the end
}

// Result is the outcome of ReplayAll.
type Result struct {
	// Prefix is the shortest prefix that replays to the target, nil when
	// there was no target.
	Prefix *Prefix
	// Values are the PCR values at the end of the prefix, under the rule
	// each bank followed.
	Values pcr.Values
}

// ReplayAll extends r with every entry up to the end of the list and, when
// target is not empty, finds the shortest prefix that replays to it, as
// FindPrefix does. Unlike FindPrefix it reads the whole list, and it hashes
// template data on a second goroutine, so replay takes about half the time
// on two cores. It returns an error wrapping ErrNoPrefixMatch when no prefix
// matches; r then holds the whole list either way.
func ReplayAll(entries EntryReader, r *Replayer, target pcr.Values) (*Result, error) {
	var targets []targetPCR
	if len(target) > 0 {
		var err error
		if targets, err = r.compileTarget(target); err != nil {
			return nil, err
		}
	}

	batches := make(chan *hashedBatch, 4)
	free := make(chan *hashedBatch, 6)
	done := make(chan struct{})
	defer close(done)
	go r.hashBatches(entries, batches, free, done)

	result := &Result{}
	var (
		count          int64
		last           *imalog.Entry
		bootAggregates []int64
	)
	checkMatch := func() {
		if result.Prefix != nil || len(targets) == 0 {
			return
		}
		if rules, ok := r.matchTargets(targets); ok {
			result.Prefix = &Prefix{Entries: count, Last: last, Rules: rules}
			result.Values = r.Values(rules)
			return
		}
		for i := range targets {
			t := &targets[i]
			if t.first < 0 && r.matchOne(t) {
				t.first = count
			}
		}
	}

	checkMatch()
	for batch := range batches {
		for i := range batch.entries {
			h := &batch.entries[i]
			if err := r.extendHashed(h); err != nil {
				return nil, err
			}
			if count > 0 && result.Prefix == nil && bytes.Contains(h.entry.TemplateData, []byte("boot_aggregate")) {
				bootAggregates = append(bootAggregates, h.entry.Index)
			}
			count++
			last = h.entry
			checkMatch()
		}
		if batch.err != nil {
			if !errors.Is(batch.err, io.EOF) {
				return nil, batch.err
			}
			break
		}
		batch.entries = batch.entries[:0]
		select {
		case free <- batch:
		default:
		}
	}

	if len(targets) > 0 && result.Prefix == nil {
		return result, noMatchError(targets, count, bootAggregates)
	}
	return result, nil
}

// hashBatches reads entries and hashes them in batches until the list ends,
// a read fails, or done is closed.
func (r *Replayer) hashBatches(entries EntryReader, batches chan<- *hashedBatch, free chan *hashedBatch, done <-chan struct{}) {
	defer close(batches)
	for {
		var batch *hashedBatch
		select {
		case batch = <-free:
		default:
			batch = &hashedBatch{entries: make([]hashedEntry, 0, batchSize)}
		}

		for len(batch.entries) < batchSize {
			e, err := entries.Next()
			if err != nil {
				batch.err = err
				break
			}
			batch.entries = append(batch.entries, hashedEntry{entry: e})
			r.hashEntry(&batch.entries[len(batch.entries)-1])
		}

		select {
		case batches <- batch:
		case <-done:
			return
		}
		if batch.err != nil {
			return
		}
	}
}

// matchTargets is Match for compiled targets, allocating only on a match.
func (r *Replayer) matchTargets(targets []targetPCR) (map[pcr.Alg]Rule, bool) {
	for start := 0; start < len(targets); {
		end := start
		for end < len(targets) && targets[end].alg == targets[start].alg {
			end++
		}
		if r.bankRule(targets[start:end]) == 0 {
			return nil, false
		}
		start = end
	}

	rules := make(map[pcr.Alg]Rule)
	for start := 0; start < len(targets); {
		end := start
		for end < len(targets) && targets[end].alg == targets[start].alg {
			end++
		}
		rules[targets[start].alg] = r.bankRule(targets[start:end])
		start = end
	}
	return rules, true
}

// bankRule returns the rule under which every target of one bank matches,
// or 0.
func (r *Replayer) bankRule(bank []targetPCR) Rule {
	for _, rule := range [2]Rule{RulePerBank, RulePaddedSHA1} {
		ok := true
		for i := range bank {
			t := &bank[i]
			if !bytes.Equal(r.value(t.pos, t.alg, t.index, rule), t.want) {
				ok = false
				break
			}
		}
		if ok {
			return rule
		}
	}
	return 0
}
