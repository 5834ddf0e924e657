package outbox_test

import (
	"context"
	"testing"

	"github.com/iot-fleet/iot-fleet/device/outbox"
)

// BenchmarkEnqueue measures a durable enqueue (file write, fsync, rename,
// directory fsync).
func BenchmarkEnqueue(b *testing.B) {
	ob, err := outbox.Open(b.TempDir(), outbox.Options{Logger: quiet, MaxMessages: b.N + 1})
	if err != nil {
		b.Fatal(err)
	}
	payload := []byte(`{"status":"IN_PROGRESS","statusDetails":{"step":"installing"},"expectedVersion":3,"clientToken":"0123456789abcdef"}`)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := ob.Publish(ctx, "$aws/things/dev-a/jobs/j1/update", payload); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEnqueueAndDeliver measures enqueue plus in-order QoS 1 delivery
// to the local IoT Core over mutual TLS (PUBACK awaited, file deleted).
func BenchmarkEnqueueAndDeliver(b *testing.B) {
	br := startCloud(b)
	c := connForB(b, br, "dev-a")
	ob, err := outbox.Open(b.TempDir(), outbox.Options{Logger: quiet, MaxMessages: b.N + 1})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = c.Run(ctx) }()
	go func() { _ = ob.Run(ctx, c) }()
	if err := c.WaitConnected(ctx); err != nil {
		b.Fatal(err)
	}
	payload := []byte(`{"status":"IN_PROGRESS"}`)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := ob.Publish(ctx, "dt/fleet/dev-a/status", payload); err != nil {
			b.Fatal(err)
		}
	}
	if err := ob.WaitEmpty(ctx); err != nil {
		b.Fatal(err)
	}
}
