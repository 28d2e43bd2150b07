package migrate

// Minimal OCI runtime-spec 1.0 config.json (opencontainers/runtime-spec config.md and
// config-linux.md), just the fields this engine sets.

type ociSpec struct {
	OCIVersion string     `json:"ociVersion"`
	Process    ociProcess `json:"process"`
	Root       ociRoot    `json:"root"`
	Hostname   string     `json:"hostname"`
	Mounts     []ociMount `json:"mounts"`
	Linux      ociLinux   `json:"linux"`
}

type ociProcess struct {
	Terminal bool     `json:"terminal"`
	User     ociUser  `json:"user"`
	Args     []string `json:"args"`
	Env      []string `json:"env"`
	Cwd      string   `json:"cwd"`
	// NoNewPrivileges is set: the service never needs setuid transitions.
	NoNewPrivileges bool `json:"noNewPrivileges"`
}

type ociUser struct {
	UID uint32 `json:"uid"`
	GID uint32 `json:"gid"`
}

type ociRoot struct {
	Path     string `json:"path"`
	Readonly bool   `json:"readonly"`
}

type ociMount struct {
	Destination string   `json:"destination"`
	Type        string   `json:"type"`
	Source      string   `json:"source"`
	Options     []string `json:"options,omitempty"`
}

type ociNamespace struct {
	Type string `json:"type"`
	Path string `json:"path,omitempty"`
}

type ociLinux struct {
	CgroupsPath string         `json:"cgroupsPath"`
	Namespaces  []ociNamespace `json:"namespaces"`
	MaskedPaths []string       `json:"maskedPaths,omitempty"`
}

// ociConfig returns the config of a service container: writable root "rootfs", /dev/null stdio
// (terminal false), its own pid/ipc/uts/mount namespaces, the pod's network namespace by path and
// no user namespace. cgroupsPath is per node so that two nodes on one machine do not share a cgroup.
func ociConfig(args, env []string, netnsPath, cgroupsPath string) ociSpec {
	return ociSpec{
		OCIVersion: "1.0.2",
		Process: ociProcess{
			Args:            args,
			Env:             append([]string{"PATH=/", "GOMAXPROCS=2"}, env...),
			Cwd:             "/",
			NoNewPrivileges: true,
		},
		Root:     ociRoot{Path: "rootfs"},
		Hostname: "service",
		Mounts: []ociMount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "size=16m"}},
		},
		Linux: ociLinux{
			CgroupsPath: cgroupsPath,
			Namespaces: []ociNamespace{
				{Type: "pid"}, {Type: "ipc"}, {Type: "uts"}, {Type: "mount"},
				{Type: "network", Path: netnsPath},
			},
			MaskedPaths: []string{"/proc/kcore", "/proc/keys", "/proc/timer_list"},
		},
	}
}
