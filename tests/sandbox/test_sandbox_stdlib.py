"""The whole standard library imports in the sandbox, through read-only views; nothing else of
the file system is visible and nothing is writable outside the test's tmpfs (issue 12, item 1)."""
import json
import os
import sysconfig
import textwrap

from sandbox import Verdict, rootfs
from sandbox_helpers import assert_untouched, stdin_problem

# Modules that cannot import here whatever the sandbox does: Windows-only, the GUI ones (Tk's
# shared libraries are not offered) and the deprecated NIS client `nis` (nor its Kerberos ones).
UNAVAILABLE = {"msilib", "msvcrt", "nt", "winreg", "winsound", "tkinter", "turtle", "turtledemo",
               "idlelib", "nis"}


def _stderr_of(pool, code, stdin="", **options):
    result = pool.grade(stdin_problem([(stdin, "-")]), textwrap.dedent(code), **options)
    assert result.tests and result.tests[0].exit_code == 0, result
    return result.tests[0].stderr


def test_every_public_stdlib_module_imports(pool):
    code = """
    import contextlib, importlib, io, json, sys
    failed = []
    for name in sorted(sys.stdlib_module_names):
        if not name.startswith("_"):
            try:  # (`this` prints the Zen, `antigravity` tries a browser)
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    importlib.import_module(name)
            except BaseException as e:
                failed.append(name)
    sys.stderr.write(json.dumps(failed))
    """
    failed = json.loads(_stderr_of(pool, code, time_limit=20.0))
    assert set(failed) <= UNAVAILABLE, failed


def test_fileinput_and_doctest_programs_pass(pool):
    fileinput_code = "import fileinput\nprint(sum(int(line) for line in fileinput.input()))\n"
    assert pool.grade(stdin_problem([("1\n2\n3\n", "6")]), fileinput_code).verdict is Verdict.ACCEPTED
    doctest_code = textwrap.dedent('''
    def add(a, b):
        """
        >>> add(1, 2)
        3
        """
        return a + b

    if __name__ == "__main__":
        import doctest
        doctest.testmod()
        print(add(*map(int, input().split())))
    ''')
    assert pool.grade(stdin_problem([("2 5\n", "7")]), doctest_code).verdict is Verdict.ACCEPTED
    # Modules imported lazily by the standard library itself: a codec, a time zone database.
    code = "import zoneinfo, tomllib\nprint('é'.encode('cp437'), tomllib.loads('a = 1'))\n"
    assert pool.grade(stdin_problem([("", "b'\\x82' {'a': 1}")]), code).verdict is Verdict.ACCEPTED


def test_only_the_read_only_views_are_visible(pool, marker):
    import numpy, sortedcontainers  # noqa: F401 - rootfs.views() lists the imported packages
    views = rootfs.views()
    # The standard library, numpy, numpy.libs, sortedcontainers; not those under /tmp (a venv there),
    # which each test's tmpfs would cover.
    offered = [sysconfig.get_paths()["stdlib"]] + [os.path.dirname(m.__file__) for m in (numpy, sortedcontainers)]
    offered.insert(2, offered[1] + ".libs")
    assert views == [p for p in map(os.path.abspath, offered) if not p.startswith("/tmp/")]
    skeleton = {"/", rootfs.WORKDIR}  # the directories leading to the views
    for view in views:
        parts = view.split("/")
        skeleton |= {"/".join(parts[:i]) for i in range(2, len(parts))}
    code = f"""
    import errno, os, sys
    views, skeleton = {views!r}, {sorted(skeleton)!r}
    extra, writable = [], []
    for d, subdirs, files in os.walk("/"):
        if d in views:
            subdirs[:] = []  # the views' own contents: the interpreter's files
        else:
            extra += [os.path.join(d, f) for f in files] + ([d] if d not in skeleton else [])
            extra += [os.path.join(d, s) for s in subdirs if os.path.join(d, s) not in skeleton + views]
    for d in views + skeleton:
        try:
            open(os.path.join(d, "{marker}"), "w").close()
            if d != "/tmp":
                writable.append(d)
        except OSError as e:
            assert e.errno == errno.EROFS, (d, e)
    for path in ["/etc/passwd", "/proc/self/environ", "/dev/null", {os.path.abspath(__file__)!r}]:
        assert not os.path.exists(path), path
    sys.stderr.write(repr((extra, writable, os.getcwd(), os.listdir("."))))
    """
    extra, writable, cwd, listing = eval(_stderr_of(pool, code))
    assert extra == [] and writable == []
    assert cwd == rootfs.WORKDIR and listing == [marker]  # its own tmpfs, emptied after the test
    assert_untouched(pool, marker)
