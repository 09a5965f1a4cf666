/* A test object for the loader's ring buffer and shared globals (tests/test_libbpf_binding.py): each system
 * call of target_tgid is counted in .bss and its number written to the ring buffer. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
char LICENSE[] SEC("license") = "GPL";
struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 4096 * 4); } events SEC(".maps");
__u32 target_tgid = 0;
__u64 seen = 0;
SEC("tp_btf/sys_enter")
int BPF_PROG(on_enter, struct pt_regs *regs, long id)
{
	if ((bpf_get_current_pid_tgid() >> 32) != target_tgid) return 0;
	seen++;
	__u64 *e = bpf_ringbuf_reserve(&events, 8, 0);
	if (!e) return 0;
	*e = id;
	bpf_ringbuf_submit(e, 0);
	return 0;
}
