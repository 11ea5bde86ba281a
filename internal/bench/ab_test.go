package bench

import (
	"flag"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/tcpack/tcpack/internal/kernel"
	"github.com/tcpack/tcpack/internal/netnstest"
)

var (
	abObjects = flag.String("ab-objects", "", "two eBPF objects (old.o,new.o) whose -ab-program to compare in the same traffic")
	abProgram = flag.String("ab-program", "net_dev_start_xmit_btf", "the program of both objects to compare, or two names (first,second) for one each; "+
		"a name may join several with + (ack_sockops+ack_data_arrival), all loaded and attached together")
)

// BenchmarkProgramAB attaches programs (tp_btf, or sock_ops at the cgroup root) from each of
// two builds of an object, or two sets of programs such as empty ones from floor.bpf.c, at
// once and runs TCP RR through a veth pair: both see the same packets in the same moments, so
// the difference of their ns/run is the change's, which separate runs on a shared VM (70 ns
// apart for the same code) cannot show. The order of attachment alternates between
// repetitions. Maps and variables are the objects' own, at their defaults, except that an
// object's one-entry `armed` map (the ACK family's) is set, as its arming does; no collector
// runs.
//
//	make bench BENCH_FLAGS="-ab-objects=/tmp/old.o,internal/txqueue/txqueue_x86_bpfel.o -reps=4"
//	make bench BENCH_FLAGS="-ab-objects=/tmp/old.o,internal/acks/acks_x86_bpfel.o -ab-program=ack_sockops+ack_data_arrival"
func BenchmarkProgramAB(b *testing.B) {
	if *abObjects == "" {
		b.Skip("a tool, not a measurement of the product: give -ab-objects=old.o,new.o to compare two builds")
	}
	netnstest.RequireRoot(b)
	paths := strings.Split(*abObjects, ",")
	if len(paths) != 2 {
		b.Fatalf("-ab-objects %q: want two object files separated by a comma", *abObjects)
	}
	names := strings.Split(*abProgram, ",")
	if len(names) == 1 {
		names = append(names, names[0])
	}
	if len(names) != 2 {
		b.Fatalf("-ab-program %q: want one program name, or two separated by a comma", *abProgram)
	}
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Fatalf("BPF statistics: %v", err)
	}
	defer stats.Close()
	pair := netnstest.NewPair(b)
	rr := tcpRR(b, pair)
	for rep := 0; rep < *reps; rep++ {
		order := []int{0, 1}
		if rep%2 == 1 {
			order = []int{1, 0}
		}
		progs := make([]map[string]*ebpf.Program, 2)
		var undo [2]func()
		for _, i := range order {
			progs[i], undo[i] = attachAB(b, paths[i], strings.Split(names[i], "+"))
		}
		rate := rr(b, *runFor)
		var line string
		for i := range progs {
			for _, name := range strings.Split(names[i], "+") {
				s, err := progs[i][name].Stats()
				if err != nil {
					b.Fatal(err)
				}
				line += fmt.Sprintf("  %s:%s %.1f ns/run", paths[i], name, float64(s.Runtime.Nanoseconds())/float64(max(s.RunCount, 1)))
			}
		}
		fmt.Printf("rep %d (attached %v first) %.2f ktrans/s:%s\n", rep, paths[order[0]], rate, line)
		undo[0]()
		undo[1]()
	}
}

// attachAB loads the object's programs with the object's maps and attaches them; the undo
// detaches and unloads them, and is also a cleanup of the benchmark.
func attachAB(b *testing.B, path string, names []string) (map[string]*ebpf.Program, func()) {
	spec, err := ebpf.LoadCollectionSpec(path)
	if err != nil {
		b.Fatal(err)
	}
	progSpecs := map[string]*ebpf.ProgramSpec{}
	for _, name := range names {
		if spec.Programs[name] == nil {
			b.Fatalf("%s has no program %s (-ab-program)", path, name)
		}
		progSpecs[name] = spec.Programs[name]
	}
	coll, err := ebpf.NewCollectionWithOptions(&ebpf.CollectionSpec{
		Maps: spec.Maps, Programs: progSpecs,
		Variables: spec.Variables, Types: spec.Types, ByteOrder: spec.ByteOrder,
	}, ebpf.CollectionOptions{})
	if err != nil {
		b.Fatalf("%s: %v", path, err)
	}
	var links []link.Link
	var once sync.Once
	undo := func() {
		once.Do(func() {
			for _, l := range links {
				l.Close()
			}
			coll.Close()
		})
	}
	b.Cleanup(undo)
	if armed := coll.Maps["armed"]; armed != nil {
		if err := armed.Put(uint32(0), uint32(1)); err != nil {
			b.Fatalf("%s: set armed: %v", path, err)
		}
	}
	cgroup, err := kernel.CgroupV2Root()
	if err != nil {
		b.Fatal(err)
	}
	for _, name := range names {
		prog := coll.Programs[name]
		var l link.Link
		switch prog.Type() {
		case ebpf.SockOps:
			l, err = link.AttachCgroup(link.CgroupOptions{Path: cgroup, Attach: ebpf.AttachCGroupSockOps, Program: prog})
		default:
			l, err = link.AttachTracing(link.TracingOptions{Program: prog})
		}
		if err != nil {
			b.Fatalf("%s: attach %s: %v", path, name, err)
		}
		links = append(links, l)
	}
	return coll.Programs, undo
}
