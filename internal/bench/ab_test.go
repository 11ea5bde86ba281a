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

	"github.com/tcpack/tcpack/internal/netnstest"
)

var (
	abObjects = flag.String("ab-objects", "", "two eBPF objects (old.o,new.o) whose -ab-program to compare in the same traffic")
	abProgram = flag.String("ab-program", "net_dev_start_xmit_btf", "the tp_btf program of both objects to compare, or two names (first,second) for one each")
)

// BenchmarkProgramAB attaches one tp_btf program from each of two builds of an object (or two
// programs, such as an empty one from floor.bpf.c) to the same tracepoint at once and runs TCP RR through a veth pair: both see the same packets in the
// same moments, so the difference of their ns/run is the change's, which separate runs on a
// shared VM (70 ns apart for the same code) cannot show. The order of attachment alternates
// between repetitions. Maps are the objects' own, at their default sizes; no collector runs.
//
//	make bench BENCH_FLAGS="-ab-objects=/tmp/old.o,internal/txqueue/txqueue_x86_bpfel.o -reps=4"
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
		progs := make([]*ebpf.Program, 2)
		var undo [2]func()
		for _, i := range order {
			progs[i], undo[i] = attachAB(b, paths[i], names[i])
		}
		rate := rr(b, *runFor)
		var line string
		for i, p := range progs {
			s, err := p.Stats()
			if err != nil {
				b.Fatal(err)
			}
			line += fmt.Sprintf("  %s:%s %.1f ns/run", paths[i], names[i], float64(s.Runtime.Nanoseconds())/float64(max(s.RunCount, 1)))
		}
		fmt.Printf("rep %d (attached %v first) %.2f ktrans/s:%s\n", rep, paths[order[0]], rate, line)
		undo[0]()
		undo[1]()
	}
}

// attachAB loads the object's -ab-program with the object's maps and attaches it; the undo
// detaches and unloads it, and is also a cleanup of the benchmark.
func attachAB(b *testing.B, path, name string) (*ebpf.Program, func()) {
	spec, err := ebpf.LoadCollectionSpec(path)
	if err != nil {
		b.Fatal(err)
	}
	if spec.Programs[name] == nil {
		b.Fatalf("%s has no program %s (-ab-program)", path, name)
	}
	coll, err := ebpf.NewCollectionWithOptions(&ebpf.CollectionSpec{
		Maps: spec.Maps, Programs: map[string]*ebpf.ProgramSpec{name: spec.Programs[name]},
		Variables: spec.Variables, Types: spec.Types, ByteOrder: spec.ByteOrder,
	}, ebpf.CollectionOptions{})
	if err != nil {
		b.Fatalf("%s: %v", path, err)
	}
	prog := coll.Programs[name]
	l, err := link.AttachTracing(link.TracingOptions{Program: prog})
	if err != nil {
		coll.Close()
		b.Fatalf("%s: attach %s: %v", path, name, err)
	}
	var once sync.Once
	undo := func() {
		once.Do(func() {
			l.Close()
			coll.Close()
		})
	}
	b.Cleanup(undo)
	return prog, undo
}
