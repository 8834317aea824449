// Package arkreceiver is the OpenTelemetry Collector receiver "ark": it reads
// Ark's JSONL probe events — tailed files, the agent's exec probes, a unix
// or TCP socket — and emits them as metrics (one per event type, semantic
// convention names where they exist) and as span-linked causal traces in
// the mapping the Ark hub reads, one trace per job.
package arkreceiver

//go:generate mdatagen metadata.yaml
