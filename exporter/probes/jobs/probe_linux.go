package jobs

// supported: /proc has what the probe reads.
const supported = true
