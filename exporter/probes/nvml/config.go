package nvmlprobe

import (
	"errors"
	"fmt"
	"time"
)

// minInterval keeps a mistyped interval from turning the probe into a busy
// loop against the driver.
const minInterval = 100 * time.Millisecond

// Config is the probe's section of the agent config file:
//
//	probes:
//	  nvml:
//	    interval: 1s
//	    xid_events: true
type Config struct {
	// Interval is how often every GPU is read.
	Interval time.Duration `yaml:"interval" json:"interval"`
	// XIDEvents turns on the NVML event set that reports XID critical
	// errors as error.hw events.
	XIDEvents bool `yaml:"xid_events" json:"xid_events"`
}

// DefaultConfig is the configuration used where the config file says nothing.
func DefaultConfig() Config {
	return Config{Interval: time.Second, XIDEvents: true}
}

// Validate reports every problem with c at once.
func (c Config) Validate() error {
	var errs []error
	if c.Interval < minInterval {
		errs = append(errs, fmt.Errorf("invalid interval %q: must be at least %s", c.Interval, minInterval))
	}
	return errors.Join(errs...)
}
