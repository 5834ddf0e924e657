package observers

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestSet(t *testing.T) {
	var s Set[int]
	assert.False(t, s.Active())
	s.Notify(0) // no callbacks: nothing happens
	var got []string
	removeA := s.Add(func(v int) { got = append(got, "a", string(rune('0'+v))) })
	s.Add(func(v int) { got = append(got, "b", string(rune('0'+v))) })
	s.Notify(1)
	assert.True(t, s.Active())
	removeA()
	removeA() // twice is harmless
	s.Notify(2)
	assert.Equal(t, []string{"a", "1", "b", "1", "b", "2"}, got)
}
