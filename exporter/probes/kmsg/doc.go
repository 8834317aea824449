// Package kmsg is the kernel-log XID probe ("kmsg"): it follows /dev/kmsg
// (or a log file or FIFO given by --path.kmsg), picks out the NVIDIA
// driver's "NVRM: Xid (PCI:...)" lines, maps each PCI bus to a GPU index and
// emits one error.hw event per XID, folding floods of the same XID on the
// same GPU into one event plus a summary that carries the count.
//
// Events (docs/events.md):
//
//	event_type  error.hw
//	entity_id   gpu-<index>, or gpu-pci-<domain:bus:device> when the index is unknown
//	value       "Xid <code>: <driver message>"
//	pid         the process the driver named, when it named one
//	ts          the time the line was read, in ms (kmsg's own timestamp is
//	            time since boot on a clock that stops in suspend, so it is not
//	            converted)
//	attrs       xid, pci_bus, action (the catalog's immediate action, or
//	            UNKNOWN), process (when named), recovery_action and
//	            recovery_action_code (XID 154 only); on a flood summary also
//	            count and window, see below.
//
// De-duplication: the first XID of a (pci_bus, xid) pair is emitted at once
// and opens a window of dedup_window (default 10s). Repeats inside the
// window are only counted. When the window closes with repeats, one summary
// event is emitted with attrs count=<lines of that pair in the window,
// the first one included> and window=<dedup_window>. ark_xid_errors_total
// counts every line, repeats included.
//
// Metrics: ark_xid_errors_total{gpu,xid,action} (gpu is the index, or
// pci-<bus> when unknown), ark_kmsg_lines_total, and
// ark_kmsg_lines_ignored_total{reason} with reasons malformed_pci and
// malformed_code (an "NVRM: Xid (" line that does not parse), too_long
// (a line over 64 KiB) and overrun (/dev/kmsg overwrote records before they
// were read).
//
// Sources: a character device is read as /dev/kmsg, one record per read,
// from its end; a regular file is read from its start and then followed
// (no rotation handling: it is meant for fixtures and replays); a FIFO is
// opened read-write so that neither the open nor a departing writer ends
// the stream, which needs write permission on it. A missing or forbidden
// path is probe.ErrNoData.
package kmsg
