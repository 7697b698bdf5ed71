package replay

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha512"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"github.com/imashard/imashard/internal/shasum"
	"github.com/imashard/imashard/pkg/imalog"
	"github.com/imashard/imashard/pkg/pcr"
)

// batchSize is the number of entries handed between goroutines at once;
// large enough to make channel costs vanish, small enough to stay in cache.
const batchSize = 256

// batchesInFlight bounds the batches between the reader and the collector,
// and with them the memory a replay holds, whatever the list's size.
const batchesInFlight = 8

// maxBatchBytes ends a batch early once its entries reach this size,
// so that batches of large entries (ima-buf template data may reach
// imalog.MaxTemplateDataLen) do not multiply the memory in flight by
// batchSize.
const maxBatchBytes = 1 << 20

// intoReader is a reader that can read into entries and buffers the caller
// reuses, as *imalog.Reader can.
type intoReader interface {
	NextInto(e *imalog.Entry, buf []byte) ([]byte, error)
}

// prehashBacklog is the number of batches queued for a bank worker at
// which the reader starts computing that bank's template hashes itself.
// Tests set it to 0 to prehash every batch.
var prehashBacklog = 2

// maxReusedBuffer is the largest batch buffer kept for reuse, so that one
// huge entry does not pin its memory for the rest of the replay.
const maxReusedBuffer = 1 << 20

// Match flags a bank worker sets on an entry: after the entry, every target
// PCR of the bank equals its target under that rule.
const (
	matchPerBank uint8 = 1 << iota
	matchPadded
)

// queuedEntry is an entry on its way through ReplayAll. The reader fills
// it, including hash in a prehashed batch. Each bank worker then writes
// only its own element of match, and digest when the list's algorithm is
// its bank.
type queuedEntry struct {
	entry     *imalog.Entry
	state     *pcrState
	data      []byte // template data as hashed: padded for the legacy template
	violation bool
	sha1Hash  [sha1.Size]byte
	hash      [sha512.Size]byte // the one other bank's template hash, in a prehashed batch
	digestPos int               // bank position that checks the template digest, or -1 when the reader checked it
	digest    int
	match     [4]uint8
	err       error
}

type entryBatch struct {
	entries []queuedEntry
	// With a reader that reads into the caller's storage, the entries and
	// their bytes live here and are reused with the batch.
	owned []imalog.Entry
	buf   []byte
	base  int64 // entries of this run before the batch
	// prehashed marks a batch whose template hashes of the one bank other
	// than sha1 the reader computed, because that bank's worker lagged.
	prehashed bool
	err       error // the reader's error after these entries; io.EOF at the end
	pending   sync.WaitGroup
}

// Result is the outcome of ReplayAll.
type Result struct {
	// Prefix is the shortest prefix that replays to the target, nil when
	// there was no target.
	Prefix *Prefix
}

// ReplayAll extends r with every entry up to the end of the list and, when
// target is not empty, finds the shortest prefix that replays to it, as
// FindPrefix does. Unlike FindPrefix it reads the whole list. It runs the
// reader and every bank on goroutines of their own, so a replay of the
// sha1 and sha256 banks keeps two cores busy. It returns an error wrapping
// ErrNoPrefixMatch when no prefix matches; r then holds the whole list
// either way.
func ReplayAll(entries EntryReader, r *Replayer, target pcr.Values) (*Result, error) {
	return r.replayAll(entries, target, nil)
}

// ReplayAllReopen is ReplayAll for a list that can be read twice, such as
// a file. open returns a reader of the list from its first entry. With a
// target, the first pass extends the target's banks under the per-bank rule
// only, which every kernel since Linux 5.8 follows for the banks it can
// hash and which saves a third of the SHA-256 work. Only when no prefix
// matches does it read the list again under both rules, so a list from an
// older kernel costs two passes.
func ReplayAllReopen(open func() (EntryReader, error), r *Replayer, target pcr.Values) (*Result, error) {
	entries, err := open()
	if err != nil {
		return nil, err
	}
	skip := make([]bool, len(r.banks))
	lazy := false
	for pos, alg := range r.banks {
		if alg != pcr.SHA1 && len(target[alg]) > 0 {
			skip[pos], lazy = true, true
		}
	}
	if !lazy {
		return r.replayAll(entries, target, nil)
	}

	initial := r.Clone()
	result, err := r.replayAll(entries, target, skip)
	if !errors.Is(err, ErrNoPrefixMatch) {
		return result, err
	}

	slog.Info("replay: no prefix matches under the per-bank rule alone; reading the list again under both rules", "entries", r.entries)
	entries, err = open()
	if err != nil {
		return nil, fmt.Errorf("reopen the list for a replay under both rules: %w", err)
	}
	*r = *initial
	return r.replayAll(entries, target, nil)
}

// replayAll replays every entry; banks whose position is true in
// skipPadded are extended under the per-bank rule only, and their
// padded-rule values are left meaningless.
func (r *Replayer) replayAll(entries EntryReader, target pcr.Values, skipPadded []bool) (*Result, error) {
	var targets []targetPCR
	if len(target) > 0 {
		var err error
		if targets, err = r.compileTarget(target); err != nil {
			return nil, err
		}
	}
	// A lazy first pass ends in a second pass rather than an error, so
	// only a pass under both rules looks for the boot_aggregate entries
	// its error names.
	hintBootAggregates := skipPadded == nil
	if skipPadded == nil {
		skipPadded = make([]bool, len(r.banks))
	} else {
		r.paddedUnknown = skipPadded
	}

	result := &Result{}
	var count int64
	var last *imalog.Entry
	if len(targets) > 0 {
		if rules, ok := r.matchTargets(targets); ok {
			result.Prefix = &Prefix{Rules: rules}
		}
		for i := range targets {
			if r.matchOne(&targets[i]) {
				targets[i].first = 0
			}
		}
	}

	// The reader creates PCR states in its own map, so that nothing but
	// the workers, which the collector waits for, touches r while a
	// failed replay returns.
	states := make(map[uint32]*pcrState, len(r.pcrs))
	for index, s := range r.pcrs {
		states[index] = s
	}

	done := make(chan struct{})
	ordered := make(chan *entryBatch, batchesInFlight)
	free := make(chan *entryBatch, batchesInFlight)
	for range batchesInFlight {
		free <- &entryBatch{entries: make([]queuedEntry, 0, batchSize), owned: make([]imalog.Entry, batchSize)}
	}
	workerIn := make([]chan *entryBatch, len(r.banks))
	var workers sync.WaitGroup
	for pos := range r.banks {
		workerIn[pos] = make(chan *entryBatch, batchesInFlight)
		w := &bankWorker{r: r, pos: pos, skipPadded: skipPadded[pos]}
		for i := range targets {
			if targets[i].pos == pos {
				w.targets = append(w.targets, &targets[i])
			}
		}
		w.init()
		workers.Add(1)
		go func() {
			defer workers.Done()
			w.run(workerIn[pos], done)
		}()
	}
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		r.readBatches(entries, states, ordered, free, workerIn, done)
	}()
	defer func() {
		close(done)
		workers.Wait()
	}()

	var bootAggregates []int64
	for batch := range ordered {
		batch.pending.Wait()
		for i := range batch.entries {
			q := &batch.entries[i]
			if q.err != nil {
				return nil, q.err
			}
			e := q.entry
			count++
			last = e
			r.entries++
			if q.violation {
				r.violations++
			}
			r.recordDigest(e, q.digest)

			if len(targets) == 0 || result.Prefix != nil {
				continue
			}
			if hintBootAggregates && count > 1 && bytes.Contains(e.TemplateData, []byte("boot_aggregate")) {
				bootAggregates = append(bootAggregates, e.Index)
			}
			if rules, ok := jointMatch(targets, q); ok {
				// The batch, and the entry with it, is reused.
				result.Prefix = &Prefix{Entries: count, Last: last.Clone(), Rules: rules}
			}
		}
		if batch.err != nil {
			if !errors.Is(batch.err, io.EOF) {
				return nil, batch.err
			}
			break
		}
		batch.entries = batch.entries[:0]
		free <- batch
	}

	// The reader has finished: its map holds every PCR the list extended.
	<-readerDone
	r.pcrs = states
	r.last = nil

	if len(targets) > 0 && result.Prefix == nil {
		return result, noMatchError(targets, count, bootAggregates)
	}
	return result, nil
}

// jointMatch reports whether every bank of the targets matched after q, and
// the rule of each: per-bank where both rules match.
func jointMatch(targets []targetPCR, q *queuedEntry) (map[pcr.Alg]Rule, bool) {
	for i := range targets {
		if q.match[targets[i].pos] == 0 {
			return nil, false
		}
	}
	rules := make(map[pcr.Alg]Rule)
	for i := range targets {
		t := &targets[i]
		if q.match[t.pos]&matchPerBank != 0 {
			rules[t.alg] = RulePerBank
		} else {
			rules[t.alg] = RulePaddedSHA1
		}
	}
	return rules, true
}

// recordDigest counts the outcome of an entry's template digest check.
func (r *Replayer) recordDigest(e *imalog.Entry, digest int) {
	switch digest {
	case digestPadded:
		r.padded++
	case digestMismatch:
		r.mismatches++
		err := &imalog.EntryError{Index: e.Index, Offset: e.Offset, Err: fmt.Errorf("%w: template digest %x does not match the template data", imalog.ErrTemplateHash, e.TemplateDigest)}
		slog.Debug("template hash mismatch", "entry", e.Index, "offset", e.Offset)
		if len(r.keptMismatches) < maxKeptMismatches {
			r.keptMismatches = append(r.keptMismatches, err)
		}
	}
}

// readBatches reads entries into batches and hands each to every bank
// worker and, in order, to the collector, until the list ends, a read
// fails, or done is closed.
func (r *Replayer) readBatches(entries EntryReader, states map[uint32]*pcrState, ordered chan<- *entryBatch, free <-chan *entryBatch, workerIn []chan *entryBatch, done <-chan struct{}) {
	defer func() {
		close(ordered)
		for _, in := range workerIn {
			close(in)
		}
	}()

	// The SHA-1 template hash serves the sha1 bank, the padded rule of
	// every other bank and the digest check of SHA-1 lists, so the reader
	// computes it once for all.
	sha1Bank := -1
	for pos, alg := range r.banks {
		if alg == pcr.SHA1 {
			sha1Bank = pos
		}
	}

	into, _ := entries.(intoReader)

	other := -1
	if len(r.banks) == 2 && sha1Bank >= 0 {
		other = 1 - sha1Bank
	}

	var base int64
	for {
		var batch *entryBatch
		select {
		case batch = <-free:
		case <-done:
			return
		}
		batch.base = base
		batch.err = nil

		batch.buf = batch.buf[:0]
		if cap(batch.buf) > maxReusedBuffer {
			batch.buf = nil
		}
		batchBytes := 0
		for len(batch.entries) < batchSize && batchBytes < maxBatchBytes {
			var e *imalog.Entry
			var err error
			if into != nil {
				e = &batch.owned[len(batch.entries)]
				batch.buf, err = into.NextInto(e, batch.buf)
			} else {
				e, err = entries.Next()
			}
			if err != nil {
				batch.err = err
				break
			}
			batchBytes += entryBytes(e)
			batch.entries = append(batch.entries, queuedEntry{})
			q := &batch.entries[len(batch.entries)-1]
			r.queueEntry(q, e, states, sha1Bank)
			if q.err != nil {
				break
			}
		}
		base += int64(len(batch.entries))
		// The batch belongs to the collector once sent: decide before.
		last := batch.err != nil || (len(batch.entries) > 0 && batch.entries[len(batch.entries)-1].err != nil)

		// With one bank besides sha1, the reader takes over that bank's
		// template hashing for a batch while its worker has a backlog, so
		// that two cores share the hashing evenly.
		batch.prehashed = false
		if other >= 0 && len(workerIn[other]) >= prehashBacklog {
			batch.prehashed = true
			for i := range batch.entries {
				q := &batch.entries[i]
				if q.err == nil && !q.violation {
					templateHash(r.banks[other], q.data, q.hash[:])
				}
			}
		}

		batch.pending.Add(len(workerIn))
		for _, in := range workerIn {
			select {
			case in <- batch:
			case <-done:
				return
			}
		}
		select {
		case ordered <- batch:
		case <-done:
			return
		}
		if last {
			return
		}
	}
}

// entryBytes returns the size of e's data: its raw bytes, which contain
// the template data of a binary entry, or the template data that an ASCII
// reader rebuilt.
func entryBytes(e *imalog.Entry) int {
	return max(len(e.Raw), len(e.TemplateData))
}

// queueEntry prepares e for the bank workers.
func (r *Replayer) queueEntry(q *queuedEntry, e *imalog.Entry, states map[uint32]*pcrState, sha1Bank int) {
	q.entry = e
	if q.err = checkPCRIndex(e); q.err != nil {
		return
	}
	s, ok := states[e.PCR]
	if !ok {
		s = r.newState(e.PCR)
		states[e.PCR] = s
	}
	q.state = s
	q.digestPos = -1
	q.violation = e.IsViolation()
	if q.violation {
		return
	}

	q.data = e.TemplateData
	if e.IsLegacy() {
		if len(q.data) < 20 || len(q.data)-20 > 255 {
			q.err = fmt.Errorf("replay entry %d at byte offset %d: %w: legacy ima template data of %d bytes is not a 20-byte digest and a name of at most 255 bytes",
				e.Index, e.Offset, imalog.ErrMalformed, len(q.data))
			return
		}
		padded := make([]byte, 20+256)
		copy(padded, q.data)
		q.data = padded
	}
	q.sha1Hash = shasum.SHA1(q.data)

	for pos, alg := range r.banks {
		if alg != pcr.SHA1 && alg == e.DigestAlg {
			q.digestPos = pos
			return
		}
	}
	var digestAlgHash []byte
	if sha1Bank >= 0 && (e.DigestAlg == 0 || e.DigestAlg == pcr.SHA1) {
		digestAlgHash = q.sha1Hash[:]
	}
	q.digest = checkDigest(e, q.sha1Hash[:], digestAlgHash)
}

// newState returns the state of a PCR not extended yet: its start value in
// both rules, or zero.
func (r *Replayer) newState(index uint32) *pcrState {
	s := &pcrState{banks: make([]bankState, len(r.banks))}
	for i, alg := range r.banks {
		if value, ok := r.start.Get(alg, int(index)); ok {
			copy(s.banks[i].perBank[:], value)
			copy(s.banks[i].padded[:], value)
		}
	}
	return s
}

// bankWorker extends one bank with every entry, in order, and tracks which
// of the bank's target PCRs equal their targets.
type bankWorker struct {
	r          *Replayer
	pos        int
	alg        pcr.Alg
	size       int
	skipPadded bool
	targets    []*targetPCR
	// Targets that equal their value under each rule, and their number.
	equalPerBank, equalPadded   []bool
	nEqualPerBank, nEqualPadded int
}

func (w *bankWorker) init() {
	w.alg, w.size = w.r.banks[w.pos], w.r.sizes[w.pos]
	w.equalPerBank = make([]bool, len(w.targets))
	w.equalPadded = make([]bool, len(w.targets))
	for i, t := range w.targets {
		w.equalPerBank[i] = bytes.Equal(w.r.value(w.pos, w.alg, t.index, RulePerBank), t.want)
		w.equalPadded[i] = !w.skipPadded && bytes.Equal(w.r.value(w.pos, w.alg, t.index, RulePaddedSHA1), t.want)
		if w.equalPerBank[i] {
			w.nEqualPerBank++
		}
		if w.equalPadded[i] {
			w.nEqualPadded++
		}
	}
}

func (w *bankWorker) run(in <-chan *entryBatch, done <-chan struct{}) {
	for {
		var batch *entryBatch
		select {
		case b, ok := <-in:
			if !ok {
				return
			}
			batch = b
		case <-done:
			return
		}
		for i := range batch.entries {
			q := &batch.entries[i]
			if q.err != nil {
				break
			}
			w.extend(q, batch.base+int64(i)+1, batch.prehashed)
		}
		batch.pending.Done()
	}
}

// extend extends the bank's PCR with q; count is the number of entries of
// the run up to and including q.
func (w *bankWorker) extend(q *queuedEntry, count int64, prehashed bool) {
	var msg, paddedMsg [sha512.Size]byte
	if q.violation {
		for i := range w.size {
			msg[i] = 0xff
		}
		for i := range sha1.Size {
			paddedMsg[i] = 0xff
		}
	} else {
		switch {
		case w.alg == pcr.SHA1:
			copy(msg[:], q.sha1Hash[:])
		case prehashed:
			msg = q.hash
		default:
			templateHash(w.alg, q.data, msg[:])
		}
		copy(paddedMsg[:], q.sha1Hash[:])
		if q.digestPos == w.pos {
			q.digest = checkDigest(q.entry, q.sha1Hash[:], msg[:w.size])
		}
	}

	b := &q.state.banks[w.pos]
	extend(w.alg, b.perBank[:w.size], msg[:w.size])
	padded := w.alg != pcr.SHA1 && !w.skipPadded
	if padded {
		extend(w.alg, b.padded[:w.size], paddedMsg[:w.size])
	}

	for i, t := range w.targets {
		if t.index != q.entry.PCR {
			continue
		}
		w.nEqualPerBank += update(&w.equalPerBank[i], bytes.Equal(b.perBank[:w.size], t.want))
		switch {
		case w.alg == pcr.SHA1:
			w.nEqualPadded += update(&w.equalPadded[i], w.equalPerBank[i])
		case padded:
			w.nEqualPadded += update(&w.equalPadded[i], bytes.Equal(b.padded[:w.size], t.want))
		}
		if t.first < 0 && (w.equalPerBank[i] || w.equalPadded[i]) {
			t.first = count
		}
	}
	if len(w.targets) > 0 {
		if w.nEqualPerBank == len(w.targets) {
			q.match[w.pos] |= matchPerBank
		}
		if w.nEqualPadded == len(w.targets) {
			q.match[w.pos] |= matchPadded
		}
	}
}

// templateHash writes the alg hash of data to out.
func templateHash(alg pcr.Alg, data, out []byte) {
	switch alg {
	case pcr.SHA1:
		sum := shasum.SHA1(data)
		copy(out, sum[:])
	case pcr.SHA256:
		sum := shasum.SHA256(data)
		copy(out, sum[:])
	case pcr.SHA384:
		sum := sha512.Sum384(data)
		copy(out, sum[:])
	case pcr.SHA512:
		sum := sha512.Sum512(data)
		copy(out, sum[:])
	}
}

// update sets *flag to now and returns the change in the number of set
// flags.
func update(flag *bool, now bool) int {
	// Writing only on a change keeps the workers' flags, which may share
	// a cache line, from bouncing between cores after every entry.
	if *flag == now {
		return 0
	}
	*flag = now
	if now {
		return 1
	}
	return -1
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
