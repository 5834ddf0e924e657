package config

// Outbox bounds the durable queue of outgoing messages (the "outbox"
// section).
type Outbox struct {
	MaxMessages int `json:"maxMessages"`
	MaxAttempts int `json:"maxAttempts"`
}

// DefaultOutbox returns the outbox defaults.
func DefaultOutbox() Outbox { return Outbox{MaxMessages: 10000, MaxAttempts: 5} }

func (o Outbox) validate(path string, errs *Errors) {
	if o.MaxMessages < 1 {
		errs.Add(join(path, "maxMessages"), "must be at least 1, got %d", o.MaxMessages)
	}
	if o.MaxAttempts < 1 {
		errs.Add(join(path, "maxAttempts"), "must be at least 1, got %d", o.MaxAttempts)
	}
}
