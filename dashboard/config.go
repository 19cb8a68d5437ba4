package dashboard

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/watermill-jasper/watermill-jasper/schema"
)

// ErrInvalidConfig is wrapped by the errors of NewHandler and Config.Validate.
var ErrInvalidConfig = errors.New("watermill-jasper dashboard: invalid config")

// Defaults of Config.
const (
	// DefaultSampleInterval is Config.SampleInterval's default.
	DefaultSampleInterval = 5 * time.Second
	// DefaultSampleWindow is Config.SampleWindow's default.
	DefaultSampleWindow = 10 * time.Minute
	// DefaultListLimit is Config.ListLimit's default.
	DefaultListLimit = 200
)

// Config configures the dashboard Handler.
type Config struct {
	// Schema says where the Jasper tables are (as for the admin package). Its dialect
	// defaults to the driver's.
	Schema schema.Config
	// Token is the secret an operator types to replay or purge dead letters; it is compared
	// in constant time. Required unless ReadOnly.
	Token string
	// ReadOnly shows no replay or purge controls and refuses every POST.
	ReadOnly bool
	// PathPrefix is where the handler is mounted (e.g. "/jasper"), without a trailing
	// slash; the links of the pages start with it. Strip it before the handler
	// (http.StripPrefix). Default "" (mounted at the root).
	PathPrefix string
	// SampleInterval is how often the handler counts the rows for the throughput plot.
	// Default 5s.
	SampleInterval time.Duration
	// SampleWindow is how long the plot looks back. Default 10 minutes.
	SampleWindow time.Duration
	// ListLimit is the most dead letters one list page reads. Default 200.
	ListLimit int
	// RedactError, when set, rewrites every error before it is shown on a page (the CLI
	// removes the DSN's password with it). Errors are never shown without it passing.
	RedactError func(error) string
}

func (c *Config) setDefaults() {
	if c.SampleInterval == 0 {
		c.SampleInterval = DefaultSampleInterval
	}
	if c.SampleWindow == 0 {
		c.SampleWindow = DefaultSampleWindow
	}
	if c.ListLimit == 0 {
		c.ListLimit = DefaultListLimit
	}
	c.PathPrefix = strings.TrimSuffix(c.PathPrefix, "/")
}

// Validate checks the config, after defaults are applied.
func (c Config) Validate() error {
	c.setDefaults()
	if c.Schema.Schema != "" {
		if err := schema.ValidateIdentifier(c.Schema.Schema); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
	}
	if !c.ReadOnly && c.Token == "" {
		return fmt.Errorf("%w: a Token is required unless ReadOnly is set", ErrInvalidConfig)
	}
	if c.SampleInterval < 100*time.Millisecond {
		return fmt.Errorf("%w: SampleInterval %s is below 100ms", ErrInvalidConfig, c.SampleInterval)
	}
	if c.SampleWindow < c.SampleInterval {
		return fmt.Errorf("%w: SampleWindow %s is shorter than SampleInterval %s", ErrInvalidConfig, c.SampleWindow, c.SampleInterval)
	}
	if c.ListLimit < 0 {
		return fmt.Errorf("%w: ListLimit is negative", ErrInvalidConfig)
	}
	if c.PathPrefix != "" && (!strings.HasPrefix(c.PathPrefix, "/") || strings.ContainsAny(c.PathPrefix, "\"'<> ?#")) {
		return fmt.Errorf("%w: PathPrefix %q must start with / and be a plain path", ErrInvalidConfig, c.PathPrefix)
	}
	return nil
}
