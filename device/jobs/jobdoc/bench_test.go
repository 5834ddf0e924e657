package jobdoc

import (
	"os"
	"strings"
	"testing"
)

func BenchmarkParse(b *testing.B) {
	sample, err := os.ReadFile("testdata/install-and-cleanup.json")
	if err != nil {
		b.Fatal(err)
	}
	cases := map[string][]byte{
		"sample":      sample,
		"deep-nested": []byte(strings.Repeat("[", 9000) + strings.Repeat("]", 9000)),
		"400-steps": []byte(`{"version":"1.0","steps":[` + strings.Repeat(`{"action":{"name":"a","type":"runCommand","input":{"command":"a,b,c"}}},`, 400) +
			`{"action":{"name":"a","type":"runCommand","input":{"command":"a"}}}]}`),
	}
	for _, name := range []string{"sample", "400-steps", "deep-nested"} {
		data := cases[name]
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				_, _ = Parse(data, Options{})
			}
		})
	}
}
