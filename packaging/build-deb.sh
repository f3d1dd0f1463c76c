#!/usr/bin/env bash
# Builds the slmd Debian package with plain dpkg-deb (no cargo-deb).
#
#     bash packaging/build-deb.sh [--arch amd64|arm64|armhf|all] [--out DIR] [--version VERSION]
#
# Prints the path of each .deb on stdout (everything else goes to stderr):
# DIR/slmd_<version>_<arch>.deb, DIR defaulting to <cargo target dir>/debian.
# --arch defaults to amd64; every architecture is built on this amd64
# machine, linked against Debian 11's C library (packaging/cross-setup.sh
# fetches what that needs, once). The version defaults to the slmd crate's;
# --version sets another Debian version, e.g. 0.1.0+1 to test an upgrade.
# See packaging/README.md for what goes into the package and why.
set -euo pipefail
umask 022
export LC_ALL=C

usage() {
	if [ "${1:-2}" -eq 0 ]; then
		sed -n '2,12s/^# \{0,1\}//p' "$0"
	else
		sed -n '2,12s/^# \{0,1\}//p' "$0" >&2
	fi
	exit "${1:-2}"
}

die() {
	echo "build-deb: $*" >&2
	exit 1
}

out=""
version=""
arches=()
while [ $# -gt 0 ]; do
	case "$1" in
	--out)
		[ $# -ge 2 ] || usage
		out=$2
		shift 2
		;;
	--out=*)
		out=${1#--out=}
		shift
		;;
	--version)
		[ $# -ge 2 ] || usage
		version=$2
		shift 2
		;;
	--version=*)
		version=${1#--version=}
		shift
		;;
	--arch)
		[ $# -ge 2 ] || usage
		arches+=("$2")
		shift 2
		;;
	--arch=*)
		arches+=("${1#--arch=}")
		shift
		;;
	-h | --help) usage 0 ;;
	*)
		echo "build-deb: unknown argument: $1" >&2
		usage
		;;
	esac
done

# --out is relative to where the script was called from.
if [ -n "$out" ]; then
	mkdir -p -- "$out"
	out=$(cd -- "$out" && pwd)
fi

# Called from a test, the environment holds what cargo sets for a test
# process (CARGO_MANIFEST_DIR and the like). Some build scripts (ring's)
# rebuild when those change, so a build from a test and one from a shell
# would each throw the other's away: drop them.
while read -r name; do
	unset "$name"
done < <(compgen -e | grep -E '^(CARGO_(MANIFEST_|PKG_|CRATE_|BIN_|PRIMARY_PACKAGE|TARGET_TMPDIR)|OUT_DIR$)' || true)

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
root=$(cd -- "$here/.." && pwd)
cd -- "$root"

for tool in cargo dpkg dpkg-deb gzip md5sum readelf; do
	command -v "$tool" >/dev/null || die "needs $tool, which is not installed"
done

unit_src=systemd/slmd.service
[ -f "$unit_src" ] || die "$unit_src is missing: the package ships the systemd unit from there; write it first"

[ ${#arches[@]} -gt 0 ] || arches=(amd64)
build_arches=()
for a in "${arches[@]}"; do
	case "$a" in
	all) build_arches+=(amd64 arm64 armhf) ;;
	amd64 | arm64 | armhf) build_arches+=("$a") ;;
	*) die "unknown architecture $a: choose amd64, arm64, armhf or all" ;;
	esac
done

# Version: the crate's, with a semver pre-release (0.2.0-rc.1) turned into
# Debian's sort-before form (0.2.0~rc.1).
if [ -z "$version" ]; then
	pkgid=$(cargo pkgid -p slmd) || die "cargo pkgid -p slmd failed"
	version=${pkgid##*[@#]}
	version=${version//-/\~}
fi
[[ $version =~ ^([0-9]+:)?[0-9][A-Za-z0-9.+~-]*$ ]] ||
	die "invalid Debian version: $version"

# The cargo target directory (CARGO_TARGET_DIR, .cargo/config, or target/).
target_dir=$(cargo metadata --format-version 1 --no-deps |
	grep -o '"target_directory":"[^"]*"' | head -n1 | cut -d'"' -f4)
[ -n "$target_dir" ] || die "cannot find the cargo target directory"
[ -n "$out" ] || out="$target_dir/debian"
mkdir -p -- "$out"
cross_dir="$target_dir/cross"

# Timestamps inside the package: the last commit's, or now.
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
	SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH

# Compilers, the Debian 11 C library and qemu-user for every architecture
# asked for (a no-op once done).
bash "$here/cross-setup.sh" --dir "$cross_dir" $(printf -- '--arch %s ' "${build_arches[@]}") ||
	die "cross-setup.sh failed"

# Runs the built binary here: directly for amd64, under qemu-user with the
# Debian 11 sysroot's loader and libraries for ARM.
run_target() {
	if [ -n "$SLMD_QEMU" ]; then
		"$SLMD_QEMU" -L "$SLMD_SYSROOT" "$@"
	else
		"$@"
	fi
}

build_one() {
	local arch=$1
	# shellcheck source=/dev/null
	. "$cross_dir/env/$arch.sh"
	[ "$SLMD_DEB_ARCH" = "$arch" ] || die "$cross_dir/env/$arch.sh is for $SLMD_DEB_ARCH"

	# --no-default-features: without the `demo` feature, the one default
	# feature, so the shipped binary carries none of the HIL kit's
	# simulators (its `slmd demo` says how to run the demo from source).
	# A default feature the package does need goes in package_features.
	local package_features=""
	echo "build-deb: cargo build --profile dist -p slmd --no-default-features --features '$package_features' --target $SLMD_TRIPLE $SLMD_BUILD_STD" >&2
	local started=$SECONDS
	# shellcheck disable=SC2086 # SLMD_BUILD_STD is one flag or none
	cargo build --profile dist -p slmd --bin slmd --no-default-features --features "$package_features" \
		--target "$SLMD_TRIPLE" $SLMD_BUILD_STD >&2 ||
		die "cargo build for $arch failed"
	echo "build-deb: $arch build took $((SECONDS - started)) s" >&2
	binary="$target_dir/$SLMD_TRIPLE/dist/slmd"
	[ -x "$binary" ] || die "cargo did not produce $binary"

	work=$(mktemp -d "${TMPDIR:-/tmp}/slmd-deb.XXXXXX")
	trap 'rm -rf -- "$work"' EXIT
	pkg="$work/debian/slmd"
	doc="$pkg/usr/share/doc/slmd"

	install -d "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/lib/systemd/system" \
		"$pkg/etc/slmd" "$pkg/usr/share/man/man8" "$doc/examples" \
		"$pkg/usr/share/lintian/overrides"

	"$SLMD_STRIP" --remove-section=.comment --remove-section=.note --strip-unneeded \
		-o "$pkg/usr/bin/slmd" "$binary" || die "$SLMD_STRIP failed"
	chmod 0755 "$pkg/usr/bin/slmd"
	echo "build-deb: $arch binary $(stat -c %s "$pkg/usr/bin/slmd") bytes stripped" >&2

	install -m 0644 "$unit_src" "$pkg/lib/systemd/system/slmd.service"
	install -m 0644 packaging/slmd.toml "$pkg/etc/slmd/slmd.toml"
	install -m 0644 packaging/examples/99-slmd-serial.rules "$doc/examples/99-slmd-serial.rules"
	install -m 0644 packaging/debian/copyright "$doc/copyright"
	install -m 0644 packaging/debian/lintian-overrides "$pkg/usr/share/lintian/overrides/slmd"

	# slmd(8), generated from the command line definition by the binary
	# itself (which also shows that it runs on Debian 11's C library).
	run_target "$pkg/usr/bin/slmd" man >"$work/slmd.8" || die "slmd man failed"
	grep -q '^\.TH' "$work/slmd.8" || die "slmd man printed no man page"
	gzip -9n <"$work/slmd.8" >"$pkg/usr/share/man/man8/slmd.8.gz"

	add_doc README.md README.md
	add_doc packaging/README.Debian README.Debian

	# The changelog: changelog.gz for a native version (no Debian revision,
	# the usual case), changelog.Debian.gz when the version has one (policy
	# 12.7).
	local changelog=changelog.gz
	[[ $version != *-* ]] || changelog=changelog.Debian.gz
	sed -e "s/@VERSION@/$version/" \
		-e "s/@DATE@/$(date -u -R -d "@$SOURCE_DATE_EPOCH")/" \
		packaging/debian/changelog.in | gzip -9n >"$doc/$changelog"
	chmod 0644 "$doc/$changelog"

	# Maintainer scripts and conffiles.
	for script in postinst prerm postrm; do
		install -m 0755 "packaging/debian/$script" "$pkg/DEBIAN/$script"
	done
	install -m 0644 packaging/debian/conffiles "$pkg/DEBIAN/conffiles"

	local depends
	depends=$(shlib_depends "$pkg/usr/bin/slmd")
	[ -n "$depends" ] || die "could not compute the shared library dependencies"
	depends="$depends, adduser"
	# The unit's ExecReload may call kill(1), which is in procps.
	if grep -Eq '^Exec[A-Za-z]*=[-@:+!]*(/usr)?/bin/kill( |$)' "$unit_src"; then
		depends="$depends, procps"
	fi

	# Installed-Size as dpkg-gencontrol counts it: KiB per file, rounded up,
	# and 1 per directory or link.
	local installed_size
	installed_size=$(cd "$pkg" && find . -path ./DEBIAN -prune -o ! -name . -printf '%y %s\n' |
		awk '$1 == "f" { kib += int(($2 + 1023) / 1024); next } { kib += 1 } END { print kib }')

	sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" \
		-e "s/@INSTALLED_SIZE@/$installed_size/" -e "s/@DEPENDS@/$depends/" \
		packaging/debian/control.in >"$pkg/DEBIAN/control"
	chmod 0644 "$pkg/DEBIAN/control"

	(cd "$pkg" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | sort |
		xargs -d '\n' md5sum) >"$pkg/DEBIAN/md5sums"
	chmod 0644 "$pkg/DEBIAN/md5sums"

	find "$pkg" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

	local deb="$out/slmd_${version#*:}_${arch}.deb"
	dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >&2
	echo "build-deb: built $deb ($(stat -c %s "$deb") bytes)" >&2
	echo "$deb"
}

# Docs: policy 12.3 wants files over 4 KiB compressed.
add_doc() {
	local src=$1 name=$2
	if [ "$(stat -c %s "$src")" -gt 4096 ]; then
		gzip -9n <"$src" >"$doc/$name.gz"
		chmod 0644 "$doc/$name.gz"
	else
		install -m 0644 "$src" "$doc/$name"
	fi
}

# Depends from the binary itself (readelf works for every architecture;
# dpkg-shlibdeps would need the target's libc6 installed): libc6 at least
# the newest GLIBC_ symbol version it uses (a symbol versioned GLIBC_x.y
# exists from glibc x.y on), libgcc-s1 likewise from its GCC_ versions.
shlib_depends() {
	local bin=$1 glibc gcc lib deps=()
	glibc=$(readelf -W --dyn-syms "$bin" | grep -o '@GLIBC_[0-9.]*' | sed 's/@GLIBC_//' | sort -uV | tail -n1)
	[ -n "$glibc" ] || die "$bin uses no versioned glibc symbol: is it dynamically linked?"
	deps+=("libc6 (>= $glibc)")
	for lib in $(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
		case "$lib" in
		libc.so.6 | libm.so.6 | libpthread.so.0 | libdl.so.2 | librt.so.1 | libutil.so.1 | ld-linux*) ;;
		libgcc_s.so.1)
			gcc=$(readelf -W --dyn-syms "$bin" | grep -o '@GCC_[0-9.]*' | sed 's/@GCC_//' | sort -uV | tail -n1)
			if [ -n "$gcc" ]; then
				deps+=("libgcc-s1 (>= ${gcc%.0})")
			else
				deps+=(libgcc-s1)
			fi
			;;
		*) die "no known Debian package for the shared library $lib" ;;
		esac
	done
	local IFS=,
	echo "${deps[*]}" | sed 's/,/, /g'
}

# One subshell per architecture, so one's environment does not leak into
# the next (and set -e holds inside: no `||` around it).
for a in "${build_arches[@]}"; do
	(build_one "$a")
done
