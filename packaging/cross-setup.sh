#!/usr/bin/env bash
# One-time setup for building slmd packages on this (amd64 Debian) machine,
# for the gateways people run. Idempotent: installs or fetches only what is
# missing, so build-deb.sh calls it on every build.
#
#     bash packaging/cross-setup.sh --arch amd64|arm64|armhf|all [--dir DIR]
#
# For each architecture it makes DIR/env/<arch>.sh, which build-deb.sh
# sources: the Rust target, the compiler, linker and C compiler wrappers,
# strip, and the qemu-user command that runs the binary here. DIR defaults
# to <cargo target dir>/cross. See packaging/README.md ("Architectures").
set -euo pipefail
umask 022
export LC_ALL=C

# The oldest Debian whose C library the packages link against: Debian 11
# (glibc 2.31). Raspberry Pi OS and Ubuntu 20.04 (glibc 2.31) follow.
BASELINE_SUITE=bullseye
BASELINE_GLIBC=2.31
BASELINE_MIRROR=${SLMD_BASELINE_MIRROR:-http://deb.debian.org/debian}
# What the baseline sysroot holds: the C library, its headers and the
# kernel's, libgcc_s and libcrypt (libc6-dev's linker scripts name them).
SYSROOT_PACKAGES=(libc6 libc6-dev linux-libc-dev libgcc-s1 libcrypt1 libcrypt-dev)

usage() {
	sed -n '2,11s/^# \{0,1\}//p' "$0" >&"${2:-2}"
	exit "${1:-2}"
}

die() {
	echo "cross-setup: $*" >&2
	exit 1
}

say() {
	echo "cross-setup: $*" >&2
}

arches=()
dir=""
while [ $# -gt 0 ]; do
	case "$1" in
	--arch)
		[ $# -ge 2 ] || usage
		arches+=("$2")
		shift 2
		;;
	--arch=*)
		arches+=("${1#--arch=}")
		shift
		;;
	--dir)
		[ $# -ge 2 ] || usage
		dir=$2
		shift 2
		;;
	--dir=*)
		dir=${1#--dir=}
		shift
		;;
	-h | --help) usage 0 1 ;;
	*)
		echo "cross-setup: unknown argument: $1" >&2
		usage
		;;
	esac
done
[ ${#arches[@]} -gt 0 ] || usage
expanded=()
for a in "${arches[@]}"; do
	case "$a" in
	all) expanded+=(amd64 arm64 armhf) ;;
	amd64 | arm64 | armhf) expanded+=("$a") ;;
	*) die "unknown architecture $a: choose amd64, arm64, armhf or all" ;;
	esac
done

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
root=$(cd -- "$here/.." && pwd)
host_arch=$(dpkg --print-architecture 2>/dev/null) || die "needs dpkg: this script runs on Debian or Ubuntu"
[ "$host_arch" = amd64 ] || die "builds on an amd64 machine (this one is $host_arch)"

if [ -z "$dir" ]; then
	target_dir=$(cd -- "$root" && cargo metadata --format-version 1 --no-deps |
		grep -o '"target_directory":"[^"]*"' | head -n1 | cut -d'"' -f4)
	[ -n "$target_dir" ] || die "cannot find the cargo target directory"
	dir="$target_dir/cross"
fi
mkdir -p -- "$dir/bin" "$dir/env"
dir=$(cd -- "$dir" && pwd)

# Per architecture: Debian's name, Rust's target, the GNU triplet of the
# cross tools and the qemu-user binary.
triple_of() {
	case "$1" in
	amd64) echo x86_64-unknown-linux-gnu ;;
	arm64) echo aarch64-unknown-linux-gnu ;;
	armhf) echo armv7-unknown-linux-gnueabihf ;;
	esac
}
gnu_of() {
	case "$1" in
	amd64) echo x86_64-linux-gnu ;;
	arm64) echo aarch64-linux-gnu ;;
	armhf) echo arm-linux-gnueabihf ;;
	esac
}
qemu_of() {
	case "$1" in
	arm64) echo qemu-aarch64 ;;
	armhf) echo qemu-arm ;;
	esac
}

# --- Debian packages: cross compilers, binutils, qemu-user -----------------
need=()
need_cmd() { command -v "$1" >/dev/null || need+=("$2"); }
need_cmd dpkg-deb dpkg
need_cmd apt-get apt
need_cmd gcc gcc
need_cmd readelf binutils
need_cmd xz xz-utils
for a in "${expanded[@]}"; do
	gnu=$(gnu_of "$a")
	[ "$a" = amd64 ] && continue
	need_cmd "$gnu-gcc" "gcc-$gnu"
	need_cmd "$gnu-strip" "binutils-$gnu"
	need_cmd "$(qemu_of "$a")" qemu-user
done
if [ ${#need[@]} -gt 0 ]; then
	mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
	if [ "$(id -u)" -ne 0 ]; then
		die "missing packages: ${need[*]}; install them with: sudo apt-get install ${need[*]}"
	fi
	say "installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -qq "${need[@]}" >&2 ||
		{ apt-get update -qq >&2 && apt-get install -y -qq "${need[@]}" >&2; } ||
		die "apt-get install ${need[*]} failed"
fi

# --- Debian's Rust compiler and std source, for the ARM targets -------------
# rustup cannot add targets here, so ARM builds use Debian's rustc-web with
# its standard library source and build std with -Zbuild-std. Unpacked, not
# installed: rustc-web conflicts with rustup's cargo/rustc packaging.
rustc_web() {
	local rw="$dir/rustc-web" stamp version deps pkgs tmp d l llvm
	stamp="$rw/.complete"
	if [ -f "$stamp" ] && [ -x "$dir/bin/rustc-web" ] && "$dir/bin/rustc-web" --version >/dev/null 2>&1; then
		return
	fi
	version=$(apt-cache policy rustc-web 2>/dev/null | awk '/Candidate:/ { print $2 }')
	if [ -z "$version" ] || [ "$version" = "(none)" ]; then
		[ "$(id -u)" -eq 0 ] || die "apt knows no rustc-web package; run sudo apt-get update"
		apt-get update -qq >&2 || die "apt-get update failed"
		version=$(apt-cache policy rustc-web 2>/dev/null | awk '/Candidate:/ { print $2 }')
	fi
	[ -n "$version" ] && [ "$version" != "(none)" ] ||
		die "no rustc-web package in this machine's apt sources (Debian 12's bookworm-security has it)"
	# Its own libstd and LLVM, by the names this version's packages depend
	# on (rustc-web -> libstd-rust-web-dev -> libstd-rust-web-X -> libllvmN).
	pkgs=("rustc-web=$version" "libstd-rust-web-dev=$version" "rust-web-src=$version")
	deps=$(apt-cache depends --important "libstd-rust-web-dev=$version" 2>/dev/null |
		awk '$1 ~ /Depends:/ { print $2 }' | grep -E '^libstd-rust-web-[0-9.]+$' | sort -u)
	[ -n "$deps" ] || die "cannot tell which libstd rustc-web $version needs"
	for d in $deps; do
		pkgs+=("$d=$version")
		llvm=$(apt-cache depends --important "$d=$version" 2>/dev/null |
			awk '$1 ~ /Depends:/ { print $2 }' | grep -E '^libllvm[0-9]+$' | sort -u)
		[ -n "$llvm" ] || die "cannot tell which LLVM $d $version needs"
		for l in $llvm; do pkgs+=("$l"); done
	done
	say "fetching Debian's rustc-web $version (${pkgs[*]})"
	rm -rf -- "$rw"
	tmp="$rw.partial"
	rm -rf -- "$tmp"
	mkdir -p -- "$tmp/debs" "$tmp/root"
	(cd -- "$tmp/debs" && apt-get -o APT::Sandbox::User=root download "${pkgs[@]}" >&2) || die "apt-get download ${pkgs[*]} failed"
	for deb in "$tmp"/debs/*.deb; do
		dpkg-deb -x "$deb" "$tmp/root" || die "cannot unpack $deb"
	done
	rm -rf -- "$tmp/debs"
	[ -e "$tmp/root/usr/lib/rustlib/src/rust/library/std/Cargo.toml" ] ||
		die "rust-web-src did not provide the std source"
	mv -- "$tmp" "$rw"
	echo "$version" >"$stamp"
	cat >"$dir/bin/rustc-web" <<-EOF
		#!/bin/sh
		# Debian's rustc-web, unpacked by cross-setup.sh; its own LLVM and std.
		r='$rw/root'
		LD_LIBRARY_PATH="\$r/usr/lib/x86_64-linux-gnu:\$r/usr/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "\$r/usr/bin/rustc" --sysroot "\$r/usr" "\$@"
	EOF
	chmod 0755 "$dir/bin/rustc-web"
	"$dir/bin/rustc-web" --version >&2 || die "the unpacked rustc-web does not run"
}

# --- The baseline C library (Debian 11) per architecture --------------------
# Fetched with apt against a private configuration (signatures checked with
# the machine's debian-archive-keyring), then unpacked into a sysroot that
# the compiler wrappers pass with --sysroot.
sysroot() {
	local a=$1 sr="$dir/sysroot/$1" tmp apt_dir opts
	[ -f "$sr/.complete" ] && return
	say "fetching $BASELINE_SUITE's C library for $a into $sr"
	tmp="$sr.partial"
	rm -rf -- "$tmp" "$sr"
	apt_dir="$tmp/apt"
	mkdir -p -- "$apt_dir/state/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs" "$tmp/root"
	keyring=/usr/share/keyrings/debian-archive-keyring.gpg
	[ -f "$keyring" ] || die "needs $keyring (package debian-archive-keyring) to check $BASELINE_SUITE's signatures"
	: >"$apt_dir/status" # nothing installed: the host's packages play no part
	echo "deb [arch=$a signed-by=$keyring] $BASELINE_MIRROR $BASELINE_SUITE main" >"$apt_dir/sources.list"
	opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
		-o "Dir::State=$apt_dir/state" -o "Dir::State::status=$apt_dir/status"
		-o "Dir::Cache=$apt_dir/cache"
		-o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/dev/null
		-o "APT::Architecture=$a" -o "APT::Architectures=$a" -o Debug::NoLocking=1
		-o APT::Sandbox::User=root)
	apt-get "${opts[@]}" -qq update >&2 || die "apt-get update for $BASELINE_SUITE/$a failed ($BASELINE_MIRROR)"
	(cd -- "$apt_dir/debs" && apt-get "${opts[@]}" -qq download "${SYSROOT_PACKAGES[@]}" >&2) ||
		die "apt-get download ${SYSROOT_PACKAGES[*]} ($BASELINE_SUITE/$a) failed"
	for deb in "$apt_dir"/debs/*.deb; do
		dpkg-deb -x "$deb" "$tmp/root" || die "cannot unpack $deb"
		dpkg-deb -f "$deb" Package Version | paste -sd' ' >>"$tmp/root/.packages"
	done
	rm -rf -- "$apt_dir"
	# Absolute symlinks (libpthread.so -> /lib/<triplet>/libpthread.so.0,
	# /lib64/ld-linux-x86-64.so.2 -> /lib/...) would point into this
	# machine's root: make them relative, inside the sysroot.
	find "$tmp/root" -type l -lname '/*' -print0 | while IFS= read -r -d '' link; do
		ln -sfnr -- "$tmp/root$(readlink -- "$link")" "$link"
	done
	mv -- "$tmp/root" "$sr"
	rmdir -- "$tmp"
	touch "$sr/.complete"
}

write_env() {
	local a=$1 triple gnu sr cc env_triple qemu
	triple=$(triple_of "$a")
	gnu=$(gnu_of "$a")
	sr="$dir/sysroot/$a"
	env_triple=${triple//-/_}
	# The name carries the baseline: cargo does not see a wrapper's content
	# change, but it does see a new compiler or linker path.
	cc="$dir/bin/$triple-gcc-glibc$BASELINE_GLIBC"
	# One wrapper for the C compiler (SQLite, ring) and the linker, so both
	# see only the baseline's headers and libraries. --sysroot alone is not
	# enough: Debian's gcc searches its own target directories
	# (/usr/<triplet>/{include,lib} for the cross compilers, the host's
	# /usr/lib/<triplet> for amd64) before the sysroot's, and would link
	# the machine's newer glibc. So: gcc's own headers, then the
	# sysroot's (-nostdinc); the sysroot's start files (-B) and libraries
	# (-L) ahead of gcc's defaults.
	local gcc_include
	gcc_include=$("$gnu-gcc" -print-file-name=include)
	[ -d "$gcc_include" ] || die "$gnu-gcc has no include directory"
	cat >"$cc" <<-EOF
		#!/bin/sh
		# Written by packaging/cross-setup.sh: $gnu-gcc against $BASELINE_SUITE's C library.
		exec $gnu-gcc --sysroot='$sr' -nostdinc \\
		  -isystem '$gcc_include' -isystem '$sr/usr/include/$gnu' -isystem '$sr/usr/include' \\
		  -B'$sr/usr/lib/$gnu/' -L'$sr/lib/$gnu' -L'$sr/usr/lib/$gnu' "\$@"
	EOF
	chmod 0755 "$cc"
	{
		echo "# Written by packaging/cross-setup.sh for $a; sourced by build-deb.sh."
		echo "SLMD_DEB_ARCH=$a"
		echo "SLMD_TRIPLE=$triple"
		echo "SLMD_SYSROOT='$sr'"
		echo "SLMD_STRIP=$gnu-strip"
		echo "export CC_$env_triple='$cc'"
		echo "export AR_$env_triple=$gnu-ar"
		echo "export CARGO_TARGET_${env_triple^^}_LINKER='$cc'"
		if [ "$a" = amd64 ]; then
			# rustup's toolchain has the amd64 std prebuilt.
			echo "SLMD_BUILD_STD="
			echo "SLMD_QEMU="
		else
			qemu=$(qemu_of "$a")
			echo "SLMD_BUILD_STD='-Zbuild-std=std,panic_unwind'"
			echo "SLMD_QEMU=$qemu"
			echo "export RUSTC='$dir/bin/rustc-web'"
			echo "export RUSTC_BOOTSTRAP=1"
		fi
	} >"$dir/env/$a.sh.new"
	mv -- "$dir/env/$a.sh.new" "$dir/env/$a.sh"
}

# amd64 links with the host's gcc; make sure its name is there.
command -v x86_64-linux-gnu-gcc >/dev/null || die "needs x86_64-linux-gnu-gcc (package gcc)"
command -v x86_64-linux-gnu-strip >/dev/null || die "needs x86_64-linux-gnu-strip (package binutils)"

exec 9>"$dir/.lock"
flock 9
for a in "${expanded[@]}"; do
	[ "$a" = amd64 ] || rustc_web
	sysroot "$a"
	write_env "$a"
	say "$a ready: $dir/env/$a.sh"
done
