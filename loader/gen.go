package loader

// The BPF objects are generated from ../bpf/*.c with a pinned clang (clang-19)
// and committed, so `go build` needs no clang. Regenerate with `go generate ./loader/`.
// -I/usr/include/x86_64-linux-gnu provides <asm/types.h> for the UAPI headers
// on Debian multiarch hosts.

//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type svc_key -type svc_val -type instance_val -type client_key -type client_val -type peer_val -type addr_key -type egress_key -type egress_val -type steer_reason -type instance_kind steer ../bpf/steer.c
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel pod ../bpf/pod.c
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel pass ../bpf/pass.c
