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
// Every transition is saved (atomically, before it is acted on and
// reported) as the mender_install step's own state in the jobs engine's
// state file, so the agent can be killed at any point — including by the
// reboot the update needs — and continue where it stopped. If that state
// is lost, the job's own statusDetails (step, attempt) are enough to
// continue. A state file left by an older agent (LegacyStateFileName) is
// taken over when the job's step resumes.
//
// The jobs engine runs the mender_install operation (package jobsop),
// which parses and validates the job document once into a Document and
// calls Updater.Run with the step as the Session: statuses go out through
// it durably and in order, and the OTA state is saved through it.
package ota
