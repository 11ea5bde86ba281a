#!/usr/bin/env bash
# make vmtest: run the kernel-facing test packages inside Debian's own 6.1 and 6.12 kernels under
# qemu (TCG: KVM is not usable on our machines) and on the host kernel, report pass/fail per
# kernel, and check the README's kernel table against what the run saw.
#
#   internal/vmtest/vmtest.sh            run the matrix; fail if a test fails or the table is stale
#   VMTEST_UPDATE_README=1 ...vmtest.sh  run it and rewrite the README's kernel table
#
# Everything comes from Debian packages: qemu-system-x86, busybox-static, cpio, and the kernel
# images (downloaded and unpacked under build/vm, never installed on the host). The guest boots
# a small initramfs: busybox, the host's ip/tc/nft with their libraries, the modules the tests
# need, and statically linked Go test binaries. Output is on the serial console.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${VMTEST_OUT:-$ROOT/build/vm}
# Guest kernels as series:metapackage. The metapackage follows the Debian release of the host
# (bookworm here); the series check stops a different release from silently testing another
# kernel.
KERNELS=(6.1:linux-image-amd64 6.12:linux-image-6.12-amd64)
# Both Debian kernels have kprobes and BPF trampolines; a failure to use them is a bug. Both
# guests have a 4-queue virtio-net NIC (virtio_mq, below) for the txqueue tests.
GUEST_EXPECT=fentry,fexit,kprobe,kretprobe,virtio_mq
PACKAGES=(./internal/kernel ./internal/loader ./internal/drops ./internal/acks ./internal/quickack ./internal/txqueue ./internal/footprint)
# VMTEST_PACKAGES="./internal/loader ./internal/acks" runs a subset while developing; the README's
# kernel table is then not checked.
if [ -n "${VMTEST_PACKAGES:-}" ]; then
	read -r -a PACKAGES <<<"$VMTEST_PACKAGES"
fi
# VMTEST_TEST_ARGS="-test.run=^TestX$ -test.count=20" is passed to every test binary in the guests
# (chasing a flaky test); VMTEST_KERNELS="6.1" boots only the named series. Either one also
# leaves the README's kernel table unchecked.
TEST_ARGS=${VMTEST_TEST_ARGS:-}
if [ -n "${VMTEST_KERNELS:-}" ]; then
	wanted=()
	for k in "${KERNELS[@]}"; do
		case " $VMTEST_KERNELS " in *" ${k%%:*} "*) wanted+=("$k") ;; esac
	done
	KERNELS=("${wanted[@]}")
fi
MODULES=(veth nf_tables sch_tbf virtio_pci virtio_net)
# The guests' NIC: virtio-net with 4 queue pairs, whose host end is a multi-queue tap, up, in a
# network namespace of its own with no address: what the guest sends there goes no further.
VM_NETNS=tcpack-vmtest-$$
VM_TAP=tcpackvm0
# Per guest (each takes ~3.7 min here; they run one after the other). A test binary stops
# itself after 3 min (init: -test.timeout), so a hang prints its goroutines before this fires.
TIMEOUT=${VMTEST_TIMEOUT:-420}

log() { printf 'vmtest: %s\n' "$*" >&2; }

install_deps() {
	local need=()
	command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
	[ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q 'statically linked' || need+=(busybox-static)
	command -v cpio >/dev/null || need+=(cpio)
	command -v xz >/dev/null || need+=(xz-utils)
	command -v file >/dev/null || need+=(file)
	command -v ethtool >/dev/null || need+=(ethtool) # copied into the guest for the txqueue tests
	if [ ${#need[@]} -gt 0 ]; then
		log "installing ${need[*]}"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
	fi
}

# fetch_kernel SERIES:META: prints the directory of the unpacked kernel package META depends
# on, after checking it is of that kernel series.
fetch_kernel() {
	local series=${1%%:*} meta=${1#*:} pkg
	# apt-cache fails on a package it has never heard of: that is the case the update mends.
	pkg=$(apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}' || true)
	if [ -z "$pkg" ]; then
		apt-get update -qq
		pkg=$(apt-cache depends "$meta" | awk '/Depends: linux-image-/ {print $2; exit}')
	fi
	[ -n "$pkg" ] || { log "cannot resolve $meta"; exit 1; }
	case $pkg in
	linux-image-"$series".*) ;;
	*)
		log "$meta gives $pkg here, not a $series kernel: this host's Debian release differs; update KERNELS"
		exit 1
		;;
	esac
	local dir=$OUT/kernels/$pkg
	if [ ! -d "$dir" ]; then
		mkdir -p "$OUT/debs"
		(cd "$OUT/debs" && apt-get download -q "$pkg" >&2)
		local deb tmp
		deb=$(ls "$OUT/debs/${pkg}_"*.deb | sort -V | tail -n 1)
		tmp=$(mktemp -d "$OUT/kernels/.unpack.XXXXXX")
		dpkg-deb -x "$deb" "$tmp"
		mv "$tmp" "$dir" # only a complete unpack counts as cached
	fi
	echo "$dir"
}

# copy_with_libs BIN...: copies host binaries and the shared libraries they load into $1's tree.
copy_with_libs() {
	local dest=$1
	shift
	for bin in "$@"; do
		local path
		path=$(command -v "$bin")
		# /usr/local/sbin comes first in the guest's PATH: busybox has an ip applet too.
		install -D "$path" "$dest/usr/local/sbin/$bin"
		ldd "$path" | awk '/=>/ {print $3} /ld-linux/ {print $1}' | while read -r lib; do
			if [ -f "$lib" ]; then
				install -D "$lib" "$dest$lib"
			fi
		done
	done
	install -D /lib64/ld-linux-x86-64.so.2 "$dest/lib64/ld-linux-x86-64.so.2"
}

# add_module KDIR ROOTFS NAME: copies module NAME and, first, what it depends on.
add_module() {
	local kdir=$1 rootfs=$2 name=$3 file deps
	grep -qx "$name.ko" "$rootfs/modules/order" 2>/dev/null && return
	file=$(find "$kdir"/lib/modules/*/kernel -name "$name.ko" -o -name "$name.ko.xz" | sed -n 1p)
	if [ -z "$file" ]; then
		grep -q "/$name.ko" "$kdir"/lib/modules/*/modules.builtin && return # built in
		log "module $name not found in $kdir"
		exit 1
	fi
	local tmp
	tmp=$(mktemp)
	case $file in
	*.xz) xz -dc "$file" >"$tmp" ;; # busybox insmod cannot decompress
	*) cp "$file" "$tmp" ;;
	esac
	deps=$(tr '\0' '\n' <"$tmp" | sed -n 's/^depends=//p' | sed -n 1p | tr ',' ' ')
	for d in $deps; do
		add_module "$kdir" "$rootfs" "$d"
	done
	# Soft dependencies name a service, not a file: libcrc32c's "pre: crc32c" is met by
	# crc32c_generic, and without it libcrc32c's init fails (busybox says "unknown symbol").
	for d in $(tr '\0' '\n' <"$tmp" | sed -n 's/^softdep=pre: *//p' | sed 's/ post:.*//'); do
		for candidate in "$d" "${d}_generic"; do
			if [ -n "$(find "$kdir"/lib/modules/*/kernel -name "$candidate.ko*")" ]; then
				add_module "$kdir" "$rootfs" "$candidate"
				break
			fi
		done
	done
	mv "$tmp" "$rootfs/modules/$name.ko"
	echo "$name.ko" >>"$rootfs/modules/order"
}

build_common_rootfs() {
	local rootfs=$OUT/rootfs
	rm -rf "$rootfs"
	mkdir -p "$rootfs"/{bin,tests,modules}
	cp /bin/busybox "$rootfs/bin/busybox"
	install -m 0755 internal/vmtest/init "$rootfs/init"
	copy_with_libs "$rootfs" ip tc nft ethtool
	for pkg in "${PACKAGES[@]}"; do
		CGO_ENABLED=0 go test -c -o "$rootfs/tests/$(basename "$pkg").test" "$pkg"
	done
}

# boot KDIR: boots the kernel with the test initramfs; prints the serial log path.
boot() {
	local kdir=$1 rootfs name
	name=$(basename "$kdir")
	rootfs=$OUT/rootfs-$name
	rm -rf "$rootfs"
	cp -a "$OUT/rootfs" "$rootfs"
	: >"$rootfs/modules/order"
	for m in "${MODULES[@]}"; do
		add_module "$kdir" "$rootfs" "$m"
	done
	(cd "$rootfs" && find . | cpio -o -H newc --quiet | gzip -1) >"$OUT/initrd-$name.gz"
	local logf=$OUT/$name.log
	log "booting $name (TCG; log: $logf)"
	ip netns exec "$VM_NETNS" timeout "$TIMEOUT" qemu-system-x86_64 -accel tcg,thread=multi -cpu max -m 2048 -smp 2 \
		-nodefaults -no-user-config -display none -no-reboot -serial stdio \
		-netdev tap,id=n0,ifname=$VM_TAP,script=no,downscript=no,vhost=off,queues=4 \
		-device virtio-net-pci,netdev=n0,mq=on,vectors=10,romfile=,mac=52:54:00:7c:00:01 \
		-kernel "$kdir"/boot/vmlinuz-* -initrd "$OUT/initrd-$name.gz" \
		-append "console=ttyS0 loglevel=5 softlockup_panic=1 panic=-1 rdinit=/init tcpack.expect=$GUEST_EXPECT tcpack.args=${TEST_ARGS// /,}" \
		</dev/null >"$logf" 2>&1 || true
	echo "$logf"
}

PASSED=0
FAILED=0

# verdict LOG: 0 if every test binary passed and the guest finished.
verdict() {
	local logf=$1 ok=0 t name
	for t in "$OUT"/rootfs/tests/*.test; do
		name=$(basename "$t" .test)
		if grep -q "^TCPACK-RESULT $name PASS" "$logf"; then
			printf '  %-8s PASS\n' "$name"
			PASSED=$((PASSED + 1))
		else
			printf '  %-8s FAIL\n' "$name"
			FAILED=$((FAILED + 1))
			ok=1
		fi
	done
	grep -q '^TCPACK-DONE' "$logf" || { echo "  guest did not finish (timeout ${TIMEOUT}s or crash)"; ok=1; }
	grep '^TCPACK-ERROR' "$logf" && ok=1
	return $ok
}

# failed_tests LOG: the output of each failed top-level test (its last $FAIL_LINES lines), what
# a failed test binary printed after its last test (a panic's stack follows "--- FAIL"), the
# last lines of a binary the guest's end cut off, and the console's tail if the guest did not
# finish. Reads the whole log: a reader that stops early (head) would SIGPIPE the writer, and
# under pipefail that ends the script before it reports anything.
FAIL_LINES=150
failed_tests() {
	awk -v keep="$FAIL_LINES" '
		function reset() { n = 0 }
		function add(line) { ring[n % keep] = line; n++ }
		function dump(title,   i) {
			print "[" pkg "] " title
			if (n > keep) print "  ... (" n - keep " earlier lines left out)"
			for (i = (n > keep ? n - keep : 0); i < n; i++) print ring[i % keep]
		}
		/^TCPACK-START / { pkg = $2; running = 1; reset(); next }
		/^=== RUN   Test[^\/]*$/ { reset(); add($0); next }
		/^--- FAIL: / { add($0); dump($3); reset(); next }
		/^--- (PASS|SKIP): / { reset(); next }
		/^TCPACK-RESULT [^ ]* FAIL/ { if (n > 0) dump("after its last test:"); print; running = 0; reset(); next }
		/^TCPACK-RESULT / { running = 0; reset(); next }
		{ add($0) }
		END { if (running && n > 0) dump("cut off; its last lines:") }' <(tr -d '\r' <"$1")
	if ! grep -q '^TCPACK-DONE' "$1"; then
		echo "[guest] last lines of the console:"
		tail -n 60 "$1"
	fi
}

# guest_kernel_hung LOG: the guest did not finish and its kernel reported a lockup, a stall or a
# panic (softlockup_panic=1 turns a soft lockup into a panic, which ends the guest at once).
guest_kernel_hung() {
	! grep -q '^TCPACK-DONE' "$1" &&
		grep -Eq 'BUG: soft lockup|rcu: INFO: rcu_(sched|preempt) (self-)?detected stall|Kernel panic' "$1"
}

# kernel_hang_report LOG: the kernel's lockup lines and the stack that follows the first one.
kernel_hang_report() {
	tr -d '\r' <"$1" | awk '
		/BUG: soft lockup|detected stall|Kernel panic|blocked for more than/ { print; if (!shown) { left = 40; shown = 1 }; next }
		left > 0 { print; left-- }'
}

# series KERNEL_RELEASE: 6.1.0-56-amd64 -> 6.1
series() { echo "$1" | sed -E 's/^([0-9]+\.[0-9]+).*/\1/'; }

# table LOG...: the README's kernel table from MATRIX lines, one column per log.
table() {
	local cols=() f
	for f in "$@"; do cols+=("$(series "$(sed -n 's/^TCPACK-KERNEL \([^ ]*\).*/\1/p' "$f" | sed -n 1p)")"); done
	printf '| hook or mechanism |'
	printf ' %s |' "${cols[@]}"
	printf '\n|---|'
	printf -- '---|%.0s' "${cols[@]}"
	printf '\n'
	local fh
	# One row per family:hook in the order the tests print them (test binaries run in name order).
	for fh in $(cat "$@" | tr -d '\r' | sed -n 's/^MATRIX family=\([^ ]*\) hook=\([^ ]*\) .*/\1:\2/p' | awk '!seen[$0]++'); do
		printf '| %s: `%s` |' "${fh%%:*}" "${fh#*:}"
		for f in "$@"; do
			# "MATRIX family=F hook=H attached=STRATEGY[ (N args)]: PROGRAM", or for an
			# optional hook the kernel lacks: "MATRIX family=F hook=H attached=no reason="...""
			sed -n -e "s/^MATRIX family=${fh%%:*} hook=${fh#*:} attached=no reason=\"\(.*\)\"$/ no: \1 |/p" \
				-e "s/^MATRIX family=${fh%%:*} hook=${fh#*:} attached=\(.*\): \([^ ]*\)$/ \1: \`\2\` |/p" <(tr -d '\r' <"$f") | sed -n 1p | tr -d '\n'
		done
		printf '\n'
	done
	local mech
	for mech in fentry fexit kprobe kretprobe tracepoint; do
		printf '| loader: %s |' "$mech"
		for f in "$@"; do
			if grep -q "^MATRIX mechanism=$mech available=yes" "$f"; then
				printf ' yes |'
			else
				printf ' no: %s |' "$(sed -n "s/^MATRIX mechanism=$mech available=no reason=\"\(.*\)\"/\1/p" "$f" | sed -n 1p)"
			fi
		done
		printf '\n'
	done
}

update_readme() {
	local table_file=$1 readme=$ROOT/README.md
	awk -v tf="$table_file" '
		/<!-- kernel-table:start -->/ { print; while ((getline line < tf) > 0) print line; skip = 1; next }
		/<!-- kernel-table:end -->/ { skip = 0 }
		!skip { print }' "$readme" >"$readme.new"
	mv "$readme.new" "$readme"
}

# guest_network: the namespace and tap every guest's NIC attaches to, removed at exit.
guest_network() {
	ip netns del "$VM_NETNS" 2>/dev/null || true
	ip netns add "$VM_NETNS"
	trap 'ip netns del "$VM_NETNS" 2>/dev/null || true' EXIT
	ip -n "$VM_NETNS" tuntap add dev "$VM_TAP" mode tap multi_queue
	ip -n "$VM_NETNS" link set "$VM_TAP" up
}

main() {
	install_deps
	guest_network
	mkdir -p "$OUT/kernels"
	build_common_rootfs
	local logs=() failed=0 kdir logf
	for meta in "${KERNELS[@]}"; do
		kdir=$(fetch_kernel "$meta")
		logf=$(boot "$kdir")
		if guest_kernel_hung "$logf"; then
			# Seen once (6.1, TCG): a soft lockup on an idle vCPU, RCU
			# stalls, then every task blocked until the timeout. Four reruns of the same
			# binaries passed, so it is taken as the emulator starving a vCPU thread, not as
			# a test failure. It is reported loudly with its stack, and the guest gets one
			# more boot; a second hang fails the run like any other unfinished guest.
			cp "$logf" "${logf%.log}.hung.log"
			echo "vmtest: WARNING: the $(basename "$kdir") guest kernel hung (kept in ${logf%.log}.hung.log); booting it once more. Its report:"
			kernel_hang_report "$logf"
			logf=$(boot "$kdir")
		fi
		logs+=("$logf")
	done

	# The host kernel is the third column: the same binaries, run here.
	local host=$OUT/host.log
	{
		echo "TCPACK-KERNEL $(uname -r)"
		local t name run
		for t in "$OUT"/rootfs/tests/*.test; do
			name=$(basename "$t" .test)
			case $name in
			kernel) continue ;;
			loader) run=TestMechanisms ;;
			*) run=TestAttachReport ;; # every family package prints its MATRIX lines there
			esac
			"$t" -test.run "^$run\$" -test.v -test.count=1 2>&1 || echo "TCPACK-ERROR host $name"
		done
	} >"$host"

	echo "kernel matrix:"
	for logf in "${logs[@]}"; do
		echo "$(sed -n 's/^TCPACK-KERNEL //p' "$logf" | sed -n 1p) ($(basename "$logf"))"
		if ! verdict "$logf"; then
			failed=1
			echo "---- guest output of the tests that failed ----"
			failed_tests "$logf"
			echo "----"
		fi
	done
	if grep -q '^TCPACK-ERROR' "$host"; then
		echo "host: FAIL"
		cat "$host"
		failed=1
	fi

	table "${logs[@]}" "$host" >"$OUT/kernel-table.md"
	if [ -n "${VMTEST_PACKAGES:-}${VMTEST_TEST_ARGS:-}${VMTEST_KERNELS:-}" ]; then
		echo "VMTEST_PACKAGES, VMTEST_TEST_ARGS or VMTEST_KERNELS is set: the README's kernel table is not checked"
	elif [ "${VMTEST_UPDATE_README:-}" = 1 ]; then
		update_readme "$OUT/kernel-table.md"
		echo "README kernel table updated"
	elif ! awk '/<!-- kernel-table:start -->/{f=1; next} /<!-- kernel-table:end -->/{f=0} f' README.md | diff -u - "$OUT/kernel-table.md"; then
		echo "README's kernel table differs from what this run saw (above); run 'make kernel-table' and commit README.md"
		failed=1
	fi
	# One line per (kernel, test package), in the form CI reads.
	echo "vmtest: $PASSED passed, $FAILED failed"
	return $failed
}

main "$@"
