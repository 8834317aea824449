// Package nvmlprobe is the agent's NVML probe (probe name "nvml"): it polls
// every GPU through NVIDIA's management library (github.com/NVIDIA/go-nvml,
// libnvidia-ml.so.1 loaded at run time) and
//
//   - exports GPU gauges named after dcgm-exporter's fields (the DCGM field
//     is in each metric's help text), labelled gpu, uuid, model_name,
//     hostname, pci_bus_id and the pod, namespace and container the GPU is
//     assigned to;
//   - emits compute.util and compute.mem events for every process running on
//     a GPU, so the causal graph learns which pid consumes which GPU;
//   - emits error.hw events for XID critical errors when the driver offers
//     NVML event sets;
//   - maps PCI bus ids to GPU indices (probe.GPUResolver) for the kmsg probe.
//
// A host without the NVIDIA driver makes Run return an error wrapping
// probe.ErrNoData. Readings a GPU does not support (ERROR_NOT_SUPPORTED) are
// asked for once and then left out for that GPU.
//
// The package is named nvmlprobe, not nvml, so that it does not shadow
// go-nvml's package nvml that it is written against.
package nvmlprobe
