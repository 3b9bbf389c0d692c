"""Bootstrap run inside the sandbox's child interpreter (passed as `python -I -B -c <this file's text>`).

It lowers the resource limits (soft = hard, so an unprivileged child cannot raise them again), installs an audit
hook that stops the program at the first attempt to open a socket, start or signal a process, write outside its
working directory, load native code through ctypes or change its limits, then runs the untrusted program as
`__main__`. A stopped program exits with code 113 and a one-line reason on the report pipe; a MemoryError that
reaches the top exits with code 114.

Arguments: report_fd cpu_seconds memory_bytes file_bytes open_files processes guard(0/1) solution_path.
Not a module to import: it is only ever executed as a script in the child.
"""

import os
import sys


def _main() -> None:
    import builtins
    import resource
    import traceback

    report_fd, cpu_s, mem_b, file_b, nofile, nproc, guard = (int(a) for a in sys.argv[1:8])
    solution_path = sys.argv[8]

    def stop(code: int, reason: str) -> None:
        try:
            os.write(report_fd, reason.encode("utf-8", "replace")[:1000])
        except OSError:
            pass
        os._exit(code)

    limits = [
        (resource.RLIMIT_CPU, cpu_s, cpu_s + 1),  # SIGXCPU at the soft limit, SIGKILL one second later
        (resource.RLIMIT_AS, mem_b, mem_b),
        (resource.RLIMIT_FSIZE, file_b, file_b),
        (resource.RLIMIT_NOFILE, nofile, nofile),
        (resource.RLIMIT_NPROC, nproc, nproc),
        (resource.RLIMIT_CORE, 0, 0),
    ]
    for which, soft, hard in limits:
        resource.setrlimit(which, (soft, hard))

    with open(solution_path, encoding="utf-8") as f:
        source = f.read()
    code = compile(source, "solution.py", "exec")

    if guard:
        root = os.path.realpath(os.getcwd())
        write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
        realpath, fsdecode, join, getcwd = os.path.realpath, os.fsdecode, os.path.join, os.getcwd
        blocked = {
            "socket.__new__": "opening a socket",
            "socket.connect": "opening a socket",
            "socket.bind": "opening a socket",
            "socket.getaddrinfo": "resolving a host name",
            "os.fork": "creating a process",
            "os.forkpty": "creating a process",
            "os.posix_spawn": "creating a process",
            "os.spawn": "creating a process",
            "os.exec": "creating a process",
            "os.system": "creating a process",
            "subprocess.Popen": "creating a process",
            "os.kill": "signalling a process",
            "os.killpg": "signalling a process",
            "resource.setrlimit": "changing resource limits",
            "resource.prlimit": "changing resource limits",
            "ctypes.dlopen": "loading native code",
            "ctypes.dlsym": "loading native code",
            "ctypes.call_function": "loading native code",
        }
        # Events whose listed arguments are paths that get created, changed or removed.
        path_events = {
            "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.link": (0, 1),
            "os.symlink": (1,), "os.chmod": (0,), "os.chown": (0,), "os.truncate": (0,), "os.utime": (0,),
            "shutil.rmtree": (0,), "os.setxattr": (0,), "os.removexattr": (0,), "os.chflags": (0,),
        }

        def inside(path) -> bool:
            if isinstance(path, int):
                return True  # an already-open descriptor: its opening was vetted
            if fsdecode(path) in ("/dev/null", "/dev/stdout", "/dev/stderr"):
                return True
            p = realpath(join(getcwd(), fsdecode(path)))
            return p == root or p.startswith(root + os.sep)

        def hook(event: str, args: tuple) -> None:
            reason = blocked.get(event)
            if reason is not None:
                stop(113, f"blocked: {reason} ({event})")
            if event == "open":
                path, mode, flags = args
                writing = (mode is not None and any(c in mode for c in "wax+")) or bool((flags or 0) & write_flags)
                if writing and path is not None and not inside(path):
                    stop(113, f"blocked: writing outside the working directory ({fsdecode(path)})")
            elif event in path_events:
                for i in path_events[event]:
                    if i < len(args) and args[i] is not None and not inside(args[i]):
                        stop(113, f"blocked: changing a path outside the working directory ({event})")
            elif event == "import" and args[0] in ("ctypes", "_ctypes", "cffi"):
                stop(113, f"blocked: loading native code (import {args[0]})")

        sys.addaudithook(hook)

    sys.argv = ["solution.py"]
    namespace = {"__name__": "__main__", "__builtins__": builtins, "__file__": "solution.py"}
    try:
        exec(code, namespace)
    except MemoryError:
        stop(114, f"memory limit exceeded ({mem_b // 2**20} MB address space)")
    except SystemExit:
        raise
    except BaseException:  # noqa: BLE001 - the untrusted program's own error: show it like python would
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


_main()
