/*
 * Test rig only, never shipped: lets an ARM slmd open a serial port (a pty)
 * under qemu-user on the build machine.
 *
 * The serial crate slmd uses configures a port with the termios2 ioctls
 * (TCGETS2/TCSETS2/TCSETSW2/TCSETSF2), which every Linux kernel slmd runs
 * on handles, but which qemu-user does not translate (qemu 7.2: ENOSYS,
 * 10.0: ENOTTY). Preloaded into the emulated process (`qemu-aarch64 -E
 * LD_PRELOAD=...`), this turns them into the plain termios ioctls qemu
 * does translate; the speed travels in the Bnnn bits of c_cflag, as it did
 * before termios2. Everything else goes to the real ioctl untouched.
 *
 * The structures are the kernel's (asm-generic and arm alike), written out
 * here because <asm/termbits.h> clashes with glibc's termios headers.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>

struct kernel_termios {
	unsigned int c_iflag, c_oflag, c_cflag, c_lflag;
	unsigned char c_line;
	unsigned char c_cc[19];
};

struct kernel_termios2 {
	struct kernel_termios t;
	unsigned int c_ispeed, c_ospeed;
};

#define TCGETS 0x5401UL
#define TCSETS 0x5402UL
#define TCSETSW 0x5403UL
#define TCSETSF 0x5404UL
#define TCGETS2 0x802c542aUL
#define TCSETS2 0x402c542bUL
#define TCSETSW2 0x402c542cUL
#define TCSETSF2 0x402c542dUL
#define CBAUD 0010017U
#define BOTHER 0010000U

/* Bnnn codes in order: 0..15 are B0..B38400, then B57600 (0010001) on. */
static const unsigned int speeds[] = {
	0, 50, 75, 110, 134, 150, 200, 300, 600, 1200, 1800, 2400, 4800, 9600, 19200, 38400,
	0, 57600, 115200, 230400, 460800, 500000, 576000, 921600, 1000000, 1152000, 1500000,
	2000000, 2500000, 3000000, 3500000, 4000000,
};

static unsigned int speed_of(unsigned int cflag)
{
	unsigned int code = cflag & CBAUD;
	unsigned int index = (code & BOTHER) ? 16 + (code & 017) : code;
	return index < sizeof speeds / sizeof speeds[0] ? speeds[index] : 0;
}

static int code_of(unsigned int speed, unsigned int *code)
{
	for (unsigned int i = 0; i < sizeof speeds / sizeof speeds[0]; i++) {
		if (i != 16 && speeds[i] == speed) {
			*code = i < 16 ? i : (BOTHER | (i - 16));
			return 0;
		}
	}
	return -1;
}

int ioctl(int fd, unsigned long request, ...)
{
	static int (*real)(int, unsigned long, ...);
	va_list ap;
	va_start(ap, request);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	if (!real)
		real = (int (*)(int, unsigned long, ...))dlsym(RTLD_NEXT, "ioctl");

	struct kernel_termios2 *t2 = arg;
	switch (request) {
	case TCGETS2: {
		int r = real(fd, TCGETS, &t2->t);
		if (r == 0)
			t2->c_ispeed = t2->c_ospeed = speed_of(t2->t.c_cflag);
		return r;
	}
	case TCSETS2:
	case TCSETSW2:
	case TCSETSF2: {
		struct kernel_termios t = t2->t;
		if ((t.c_cflag & CBAUD) == BOTHER) {
			unsigned int code;
			if (code_of(t2->c_ospeed, &code) != 0) {
				errno = EINVAL;
				return -1;
			}
			t.c_cflag = (t.c_cflag & ~CBAUD) | code;
		}
		unsigned long plain = request == TCSETS2 ? TCSETS : request == TCSETSW2 ? TCSETSW : TCSETSF;
		return real(fd, plain, &t);
	}
	default:
		return real(fd, request, arg);
	}
}
