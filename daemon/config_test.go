package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLoadConfigPosition: syntax and type errors name the line and column of the file.
func TestLoadConfigPosition(t *testing.T) {
	for _, tc := range []struct{ body, want string }{
		{"{\n  \"node\": \"n0\",\n  \"uplink\": \"eth0\"\n  \"ipv4\": \"198.18.20.2\"\n}\n", ".json:4:3: invalid character '\"' after object key:value pair"},
		{"{\n  \"node\": \"n0\",\n  \"tunnel_port\": \"x\"\n}\n", ".json:3:"},
		{"{\"node\": \"n0\",}", ".json:1:15: invalid character '}'"},
	} {
		p := filepath.Join(t.TempDir(), "n0.json")
		if err := os.WriteFile(p, []byte(tc.body), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := LoadConfig(p)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.body, err, tc.want)
		}
	}
}
