package broker

// ConnectAttempt is one CONNECT the broker decided on.
type ConnectAttempt struct {
	ClientID string
	// CertificateID is the client certificate's id ("" when the client
	// presented none).
	CertificateID string
	ThingName     string
	Accepted      bool
	// Reason says why a refused CONNECT was refused.
	Reason string
}

// ObserveConnects calls fn with every CONNECT the broker accepts or
// refuses, in the order it decides them, before the client learns the
// answer. fn must not call back into the broker. stop ends the
// observation.
func (b *Broker) ObserveConnects(fn func(ConnectAttempt)) (stop func()) {
	return b.connects.Add(fn)
}
