package pcr

import (
	"bytes"
	"fmt"
	"slices"
)

// Values holds PCR values per bank and PCR index: Values[bank][index] is the
// digest, sized for the bank's algorithm.
type Values map[Alg]map[int][]byte

// Zero returns the reset value of a PCR in the bank: all zero bytes.
func Zero(alg Alg) []byte {
	return make([]byte, alg.Size())
}

// Set stores a copy of value for the PCR index in the bank.
func (v Values) Set(alg Alg, index int, value []byte) {
	if v[alg] == nil {
		v[alg] = make(map[int][]byte)
	}
	v[alg][index] = bytes.Clone(value)
}

// Get returns the value of a PCR and whether it is present.
func (v Values) Get(alg Alg, index int) ([]byte, bool) {
	value, ok := v[alg][index]
	return value, ok
}

// Banks returns the banks present, in TPM_ALG_ID order.
func (v Values) Banks() []Alg {
	banks := make([]Alg, 0, len(v))
	for alg := range v {
		banks = append(banks, alg)
	}
	slices.Sort(banks)
	return banks
}

// Indexes returns the PCR indexes present in the bank, in ascending order.
func (v Values) Indexes(alg Alg) []int {
	indexes := make([]int, 0, len(v[alg]))
	for index := range v[alg] {
		indexes = append(indexes, index)
	}
	slices.Sort(indexes)
	return indexes
}

// Clone returns a deep copy.
func (v Values) Clone() Values {
	out := make(Values, len(v))
	for alg, bank := range v {
		for index, value := range bank {
			out.Set(alg, index, value)
		}
	}
	return out
}

// Equal reports whether both hold the same banks, indexes and values.
func (v Values) Equal(other Values) bool {
	return v.Diff(other) == nil
}

// Diff returns nil when v and other are equal, or an error naming the first
// bank and PCR index, in TPM_ALG_ID and index order, where they differ.
func (v Values) Diff(other Values) error {
	banks := slices.Concat(v.Banks(), other.Banks())
	slices.Sort(banks)
	banks = slices.Compact(banks)
	for _, alg := range banks {
		indexes := slices.Concat(v.Indexes(alg), other.Indexes(alg))
		slices.Sort(indexes)
		indexes = slices.Compact(indexes)
		for _, index := range indexes {
			a, okA := v.Get(alg, index)
			b, okB := other.Get(alg, index)
			switch {
			case !okA:
				return fmt.Errorf("%s PCR %d: missing on the left", alg, index)
			case !okB:
				return fmt.Errorf("%s PCR %d: missing on the right", alg, index)
			case !bytes.Equal(a, b):
				return fmt.Errorf("%s PCR %d: %x != %x", alg, index, a, b)
			}
		}
	}
	return nil
}
