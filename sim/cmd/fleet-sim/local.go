package main

import (
	"encoding/json"
	"maps"
)

// jsonFile renders v as an indented JSON file.
func jsonFile(v map[string]any) ([]byte, error) {
	b, err := json.MarshalIndent(maps.Clone(v), "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}
