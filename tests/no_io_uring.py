"""Runs a command with the io_uring system calls refused (EPERM), as Docker 25+'s and
containerd 2's default seccomp profiles refuse them: this process installs a seccomp filter
(no privileges needed once no_new_privs is set; the filter is inherited across exec), then
execs the command. `--enosys` answers ENOSYS instead, as a kernel built without io_uring
does. Used by tests/http_epoll.rs; `--check` tries io_uring_setup and prints what the kernel
answered.

    no_io_uring.py [--enosys] COMMAND [ARGS...]
    no_io_uring.py [--enosys] --check"""
import ctypes
import os
import struct
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
EPERM = 1
ENOSYS = 38
# io_uring_setup, io_uring_enter, io_uring_register: the same numbers on every architecture.
IO_URING_CALLS = (425, 426, 427)

BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_RET_K = 0x06


def insn(code, jt, jf, k):
    return struct.pack("HBBI", code, jt, jf, k)


def main():
    args = sys.argv[1:]
    errno = EPERM
    if args and args[0] == "--enosys":
        errno = ENOSYS
        args = args[1:]
    if not args:
        sys.exit("usage: no_io_uring.py [--enosys] COMMAND [ARGS...] | --check")
    program = [insn(BPF_LD_W_ABS, 0, 0, 0)]  # seccomp_data.nr
    for i, nr in enumerate(IO_URING_CALLS):
        to_deny = len(IO_URING_CALLS) - i  # skip the other tests and the ALLOW
        program.append(insn(BPF_JEQ_K, to_deny, 0, nr))
    program.append(insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    program.append(insn(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno))
    code = b"".join(program)
    buf = ctypes.create_string_buffer(code, len(code))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(program), ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        sys.exit(f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(ctypes.get_errno())}")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        sys.exit(f"prctl(PR_SET_SECCOMP): {os.strerror(ctypes.get_errno())}")
    if args[0] == "--check":
        r = libc.syscall(425, 8, None)
        print("io_uring_setup:", r, os.strerror(ctypes.get_errno()))
        return
    os.execv(args[0], args)


main()
