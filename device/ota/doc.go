// Package ota runs full-system over-the-air updates with the mender client
// on behalf of an AWS IoT job: it parses the job document, drives mender
// (client 4 `mender-update`, client 3 `mender` subcommands or the legacy
// `-install` flags, detected at run time), publishes rate-limited progress,
// reboots gracefully and, after the reboot, verifies the device before it
// commits the update or rolls it back.
//
// Integrity (docs/ota.md): the artifact URL must be on one of the device's
// allowed hosts (Policy, else the job is REJECTED); a document's sha256 is
// checked on a local download before mender sees the file; mender verifies
// the signature with the image's ArtifactVerifyKey, and an artifact it
// refuses fails the job at once with mender's reason. A crash right after
// mender commit is resolved from mender's own state (committing step,
// show-artifact).
//
// Every transition is written to a state file in the agent's state
// directory (atomically, before it is acted on and reported), so the agent
// can be killed at any point — including by the reboot the update needs —
// and continue where it stopped. If the state file is lost, the job's own
// statusDetails (step, attempt) are enough to continue.
//
// The jobs engine calls Updater.Run for a job whose document has
// `"operation": "mender_install"`; statuses go through a Reporter, which
// must deliver them durably and in order (the agent's outbox).
package ota
