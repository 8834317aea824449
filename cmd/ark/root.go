package main

import (
	"fmt"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// version is set with -ldflags "-X main.version=...".
var version = "dev"

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "ark",
		Short:         "Find why a GPU training job is stalled, and act on it",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	// Flag parsing errors are usage errors (exit code 2).
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(newVersionCmd(), newAnalyzeCmd(), newAgentCmd(),
		newHubCmd(), newPSCmd(), newWhyCmd(), newDiagCmd(), newFixCmd(), newEventsCmd(), newRulesCmd())
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := version
			if bi, ok := debug.ReadBuildInfo(); ok && v == "dev" {
				for _, s := range bi.Settings {
					if s.Key == "vcs.revision" && len(s.Value) >= 12 {
						v += "+" + s.Value[:12]
					}
				}
				_, err := fmt.Fprintf(cmd.OutOrStdout(), "ark %s (%s)\n", v, bi.GoVersion)
				return err
			}
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "ark %s\n", v)
			return err
		},
	}
}

func noArgs(_ *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", args[0])}
	}
	return nil
}
