#!/usr/bin/env bash
# Builds the slmd Debian package with plain dpkg-deb (no cargo-deb).
#
#     bash packaging/build-deb.sh [--out DIR] [--version VERSION]
#
# Prints the path of the .deb on stdout (everything else goes to stderr):
# DIR/slmd_<version>_<arch>.deb, DIR defaulting to <cargo target dir>/debian.
# The version defaults to the slmd crate's (Cargo.toml); --version sets
# another Debian version, e.g. 0.1.0+1 to test an upgrade. See
# packaging/README.md for what goes into the package and why.
set -euo pipefail
umask 022
export LC_ALL=C

usage() {
	if [ "${1:-2}" -eq 0 ]; then
		sed -n '2,10s/^# \{0,1\}//p' "$0"
	else
		sed -n '2,10s/^# \{0,1\}//p' "$0" >&2
	fi
	exit "${1:-2}"
}

die() {
	echo "build-deb: $*" >&2
	exit 1
}

out=""
version=""
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

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
root=$(cd -- "$here/.." && pwd)
cd -- "$root"

for tool in cargo dpkg dpkg-deb gzip md5sum; do
	command -v "$tool" >/dev/null || die "needs $tool, which is not installed"
done
if command -v strip >/dev/null; then
	strip_cmd=(strip --remove-section=.comment --remove-section=.note --strip-unneeded)
elif command -v objcopy >/dev/null; then
	strip_cmd=(objcopy --strip-all --remove-section=.comment --remove-section=.note)
else
	die "needs strip or objcopy (package binutils), neither is installed"
fi

unit_src=systemd/slmd.service
[ -f "$unit_src" ] || die "$unit_src is missing: the package ships the systemd unit from there; write it first"

# Version: the crate's, with a semver pre-release (0.2.0-rc.1) turned into
# Debian's sort-before form (0.2.0~rc.1).
if [ -z "$version" ]; then
	pkgid=$(cargo pkgid -p slmd) || die "cargo pkgid -p slmd failed"
	version=${pkgid##*[@#]}
	version=${version//-/\~}
fi
[[ $version =~ ^([0-9]+:)?[0-9][A-Za-z0-9.+~-]*$ ]] ||
	die "invalid Debian version: $version"
arch=$(dpkg --print-architecture)

# The cargo target directory (CARGO_TARGET_DIR, .cargo/config, or target/).
target_dir=$(cargo metadata --format-version 1 --no-deps |
	grep -o '"target_directory":"[^"]*"' | head -n1 | cut -d'"' -f4)
[ -n "$target_dir" ] || die "cannot find the cargo target directory"
[ -n "$out" ] || out="$target_dir/debian"
mkdir -p -- "$out"

echo "build-deb: cargo build --release -p slmd" >&2
cargo build --release -p slmd >&2
binary="$target_dir/release/slmd"
[ -x "$binary" ] || die "cargo did not produce $binary"

# Timestamps inside the package: the last commit's, or now.
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
	SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH

work=$(mktemp -d "${TMPDIR:-/tmp}/slmd-deb.XXXXXX")
trap 'rm -rf -- "$work"' EXIT
pkg="$work/debian/slmd"
doc="$pkg/usr/share/doc/slmd"

install -d "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/lib/systemd/system" \
	"$pkg/etc/slmd" "$pkg/usr/share/man/man8" "$doc/examples" \
	"$pkg/usr/share/lintian/overrides"

"${strip_cmd[@]}" -o "$pkg/usr/bin/slmd" "$binary"
chmod 0755 "$pkg/usr/bin/slmd"

install -m 0644 "$unit_src" "$pkg/lib/systemd/system/slmd.service"
install -m 0644 packaging/slmd.toml "$pkg/etc/slmd/slmd.toml"
install -m 0644 packaging/examples/99-slmd-serial.rules "$doc/examples/99-slmd-serial.rules"
install -m 0644 packaging/debian/copyright "$doc/copyright"
install -m 0644 packaging/debian/lintian-overrides "$pkg/usr/share/lintian/overrides/slmd"

# slmd(8), generated from the command line definition by the binary itself.
"$pkg/usr/bin/slmd" man >"$work/slmd.8" || die "slmd man failed"
grep -q '^\.TH' "$work/slmd.8" || die "slmd man printed no man page"
gzip -9n <"$work/slmd.8" >"$pkg/usr/share/man/man8/slmd.8.gz"

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
add_doc README.md README.md
add_doc packaging/README.Debian README.Debian

# The changelog: changelog.gz for a native version (no Debian revision, the
# usual case), changelog.Debian.gz when the version has one (policy 12.7).
if [[ $version == *-* ]]; then
	changelog=changelog.Debian.gz
else
	changelog=changelog.gz
fi
sed -e "s/@VERSION@/$version/" \
	-e "s/@DATE@/$(date -u -R -d "@$SOURCE_DATE_EPOCH")/" \
	packaging/debian/changelog.in | gzip -9n >"$doc/$changelog"
chmod 0644 "$doc/$changelog"

# Maintainer scripts and conffiles.
for script in postinst prerm postrm; do
	install -m 0755 "packaging/debian/$script" "$pkg/DEBIAN/$script"
done
install -m 0644 packaging/debian/conffiles "$pkg/DEBIAN/conffiles"

# Depends: shared libraries as dpkg-shlibdeps sees them (it wants a
# debian/control, so a minimal one is made in the work dir), else from the
# binary's GLIBC symbol versions; adduser for the postinst; procps when
# the unit runs /bin/kill.
shlib_depends() {
	if command -v dpkg-shlibdeps >/dev/null; then
		printf 'Source: slmd\n\nPackage: slmd\nArchitecture: any\n' >"$work/debian/control"
		(cd "$work" && dpkg-shlibdeps -O -edebian/slmd/usr/bin/slmd 2>/dev/null) |
			sed -n 's/^shlibs:Depends=//p'
		return
	fi
	command -v objdump >/dev/null || die "needs dpkg-shlibdeps (dpkg-dev) or objdump (binutils)"
	local glibc deps=() lib
	glibc=$(objdump -T "$pkg/usr/bin/slmd" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n1)
	for lib in $(objdump -p "$pkg/usr/bin/slmd" | awk '$1 == "NEEDED" { print $2 }'); do
		case "$lib" in
		libc.so.* | libm.so.* | libpthread.so.* | libdl.so.* | librt.so.* | ld-linux*) ;;
		libgcc_s.so.1) deps+=("libgcc-s1 (>= 4.2)") ;;
		*) die "no dpkg-shlibdeps, and no known package for $lib" ;;
		esac
	done
	printf 'libc6 (>= %s)' "$glibc"
	[ ${#deps[@]} -eq 0 ] || printf ', %s' "${deps[@]}"
	echo
}
depends=$(shlib_depends)
[ -n "$depends" ] || die "could not compute the shared library dependencies"
depends="$depends, adduser"
# The unit's ExecReload may call kill(1), which is in procps.
if grep -Eq '^Exec[A-Za-z]*=[-@:+!]*(/usr)?/bin/kill( |$)' "$unit_src"; then
	depends="$depends, procps"
fi

# Installed-Size as dpkg-gencontrol counts it: KiB per file, rounded up,
# and 1 per directory or link.
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

deb="$out/slmd_${version#*:}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >&2
echo "build-deb: built $deb" >&2
echo "$deb"
