//go:build arkagent

package main

import (
	"errors"

	"github.com/spf13/cobra"
)

// The node build (`make build-agent`, tag arkagent) leaves the hub, its
// Kubernetes client and the remediator out, so the agent on every GPU host
// maps a smaller binary; `ark hub` is in the full build.
func newHubCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "hub",
		Short: "Not in this build: the hub is in the full ark binary",
		RunE: func(*cobra.Command, []string) error {
			return errors.New("this is the node build of ark (tag arkagent), without the hub: run the full ark binary")
		},
	}
}
