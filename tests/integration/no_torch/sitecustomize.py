"""A process with this directory on PYTHONPATH cannot import torch, transformers, peft or
efficientnet_lite_pytorch: they look uninstalled (`import` raises ModuleNotFoundError,
importlib.util.find_spec answers None), as in the serving image, which has none of them
(tests/integration/test_prepared.py). Processes it starts inherit PYTHONPATH, so BentoML's
workers are covered too; each process that loaded this file appends its pid to
$GRAFT_TEST_NO_TORCH_LOG, so a test can tell that they did."""
import os
import sys

BLOCKED = ("torch", "torchvision", "transformers", "peft", "efficientnet_lite_pytorch", "sentence_transformers",
           "accelerate")
for _name in BLOCKED:
    sys.modules[_name] = None  # type: ignore[assignment]  # "import of ... halted; None in sys.modules"

if os.environ.get("GRAFT_TEST_NO_TORCH_LOG"):
    with open(os.environ["GRAFT_TEST_NO_TORCH_LOG"], "a") as _log:
        _log.write(f"{os.getpid()} {' '.join(sys.argv)[:200]}\n")

# $GRAFT_TEST_READONLY: a directory this process must only read, as a volume mounted
# read-only (the tests run as any user, root included, so file modes cannot say it): opening a
# file there to write, creating, renaming or removing anything there raises EROFS and is
# logged to $GRAFT_TEST_NO_TORCH_LOG as "write <path>".
if os.environ.get("GRAFT_TEST_READONLY"):
    import builtins
    import errno
    import io

    _ROOT = os.path.realpath(os.environ["GRAFT_TEST_READONLY"])

    def _guard(path, what="write"):  # type: ignore[no-untyped-def]
        try:
            real = os.path.realpath(os.fsdecode(path))
        except TypeError:  # a file descriptor
            return
        if real == _ROOT or real.startswith(_ROOT + os.sep):
            if os.environ.get("GRAFT_TEST_NO_TORCH_LOG"):
                with _open(os.environ["GRAFT_TEST_NO_TORCH_LOG"], "a") as log:
                    log.write(f"{what} {real}\n")
            raise OSError(errno.EROFS, "read-only file system (tests/integration/no_torch)", real)

    _open, _os_open = builtins.open, os.open

    def _checked_open(file, mode="r", *args, **kwargs):  # type: ignore[no-untyped-def]
        if any(c in mode for c in "wax+"):
            _guard(file)
        return _open(file, mode, *args, **kwargs)

    def _checked_os_open(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC):
            _guard(path)
        return _os_open(path, flags, *args, **kwargs)

    def _wrap(fn, *positions):  # type: ignore[no-untyped-def]
        def checked(*args, **kwargs):  # type: ignore[no-untyped-def]
            for i in positions:
                if i < len(args):
                    _guard(args[i], fn.__name__)
            return fn(*args, **kwargs)
        return checked

    builtins.open = io.open = _checked_open
    os.open = _checked_os_open
    for _fn in ("replace", "rename"):
        setattr(os, _fn, _wrap(getattr(os, _fn), 0, 1))
    for _fn in ("mkdir", "unlink", "remove", "rmdir"):
        setattr(os, _fn, _wrap(getattr(os, _fn), 0))
