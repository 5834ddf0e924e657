package registry

import (
	"errors"
	"time"
)

// Option configures a Store implementation.
type Option func(*options)

type options struct {
	now func() time.Time
}

// WithClock makes the store take timestamps from now instead of time.Now.
func WithClock(now func() time.Time) Option {
	return func(o *options) {
		if now != nil {
			o.now = now
		}
	}
}

func buildOptions(opts []Option) options {
	o := options{now: time.Now}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// stamp is the timestamp stored in a record: UTC, whole seconds, so that it
// survives the RFC 3339 string the DynamoDB table holds unchanged.
func (o options) stamp() time.Time { return o.now().UTC().Truncate(time.Second) }

// errEmptySerial rejects a request without a serial before it reaches the
// backend (DynamoDB refuses empty key values with a vaguer error).
var errEmptySerial = errors.New("registry: empty serial")
