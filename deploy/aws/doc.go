// Package aws holds the one-time AWS set-up of the delivery pipeline as IAM
// JSON documents (GitHub OIDC trust policies and the permission policies of
// the deploy, preview and image-build roles) and the tests that keep them
// least-privilege. It has no Go API; see docs/delivery.md for the set-up
// steps. Placeholders, replaced when the documents are applied: ACCOUNT_ID,
// REGION, GITHUB_ORG, GITHUB_REPO, STATE_BUCKET.
package aws
