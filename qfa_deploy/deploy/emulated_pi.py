"""An emulated Raspberry Pi 4 (64-bit): Debian bookworm arm64 + TVM's aarch64 wheels under qemu-user.

``build_emulated_pi()`` makes, once, under ``~/.cache/qfa-deploy/emulated-pi`` (or $QFA_CACHE):

- ``rootfs/``: ``debootstrap --foreign --arch=arm64 --variant=minbase --include=python3.11 bookworm``
  (first stage only: nothing runs inside it), then every downloaded .deb unpacked with
  ``dpkg-deb -x``, which is enough for an aarch64 python3.11 under ``qemu-aarch64 -L rootfs``;
- ``site/``: the aarch64 wheels of apache-tvm, apache-tvm-ffi, numpy, ml_dtypes, cloudpickle,
  typing_extensions (``pip download --platform ... --only-binary=:all:``), unzipped.

Each part is built in a ``*.partial`` folder and renamed when complete (an interrupted build
resumes: debootstrap and pip reuse what they already downloaded). ``EmulatedPi`` then serves TVM
RPC from qemu, registered with a tracker on 127.0.0.1. It checks that ARM64 artifacts load and
compute the right numbers; its timings are emulation, not latency.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from qfa_deploy.deploy.procs import (
    LOOPBACK,
    ManagedProcess,
    start_tracker,
    tracker_answers,
    tracker_keys,
    wait_for_key,
)
from qfa_deploy.errors import QfaError
from qfa_deploy.resources import cache_root

__all__ = [
    "DEFAULT_KEY",
    "EmulatedPi",
    "PiImage",
    "WHEELS",
    "build_emulated_pi",
    "build_peer_site",
    "cache_dir",
    "find_emulated_pi",
    "missing_tools",
]

log = logging.getLogger(__name__)

DEFAULT_KEY = "rasp4b-emu"
SUITE = "bookworm"
PYTHON = "python3.11"
# Exact versions: the device side must match the host's TVM (RPC protocol, library ABI).
WHEELS = (
    "apache-tvm==0.27.0.post1",
    "apache-tvm-ffi==0.1.14.post1",
    "numpy==2.4.6",
    "ml_dtypes==0.6.0",
    "cloudpickle==3.1.2",
    "typing_extensions==4.15.0",
)
# The aarch64 peers the ARM benchmark runs beside the artifact (bench/arm64.py), in a site of their own.
# onnxruntime 1.28-1.32 segfault while importing under qemu-user 7.2 (Debian 12); 1.27.0 is the newest
# that runs there.
PEER_WHEELS = ("onnxruntime==1.27.0", "ai-edge-litert==2.3.0")
PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")
TOOLS = ("debootstrap", "dpkg-deb", "qemu-aarch64")
_DONE = ".qfa-complete"
# /proc/cpuinfo of the Pi cores (Arm's part numbers; features as Linux prints them): PiImage.cpu_root
CPUINFO = {
    "cortex-a72": ("fp asimd evtstrm crc32 cpuid", "0x0", "0xd08", "3"),
    "cortex-a76": ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc "
                   "dcpop asimddp", "0x4", "0xd0b", "1"),
}
_SERVER_SCRIPT = Path(__file__).with_name("_pi_server.py")


class PiImage:
    """A built emulated Pi: the arm64 root filesystem and the unzipped wheels."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.rootfs = self.root / "rootfs"
        self.site = self.root / "site"

    @property
    def python(self) -> Path:
        return self.rootfs / "usr" / "bin" / PYTHON

    def is_complete(self) -> bool:
        return (self.rootfs / _DONE).is_file() and (self.site / _DONE).is_file() and self.python.exists()

    def cpu_root(self, cpu: str) -> Path:
        """A root for ``qemu-aarch64 -L`` that shows the guest a /proc/cpuinfo of ``cpu`` (made once).

        qemu-user 7.2 passes the host's x86 /proc/cpuinfo through; the cpuinfo library inside
        onnxruntime and LiteRT then finds no ARM core and their optimized kernels crash or are skipped.
        The root holds that file and links to the image's system folders only: a link named like a
        host path the guest also uses (/root, /tmp) would make realpath() wander into the image.
        """
        if cpu not in CPUINFO:
            raise QfaError(f"no /proc/cpuinfo for {cpu!r}: one of {', '.join(CPUINFO)}")
        root = self.root / f"cpu-{cpu}"
        if root.is_dir():
            return root
        partial = root.with_name(root.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        (partial / "proc").mkdir(parents=True)
        for name in ("bin", "sbin", "lib", "lib64", "usr", "etc", "var"):
            if (self.rootfs / name).exists():
                (partial / name).symlink_to(self.rootfs / name)
        features, variant, part, revision = CPUINFO[cpu]
        block = (f"BogoMIPS\t: 108.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
                 f"CPU variant\t: {variant}\nCPU part\t: {part}\nCPU revision\t: {revision}\n\n")
        (partial / "proc" / "cpuinfo").write_text("".join(f"processor\t: {i}\n{block}" for i in range(4)))
        os.replace(partial, root)
        return root

    def command(self, *args: str) -> list[str]:
        """argv running the aarch64 python with ``args`` under qemu-user."""
        return ["qemu-aarch64", "-L", str(self.rootfs), str(self.python), *args]

    def environment(self) -> dict:
        # TVM_USE_RUNTIME_LIB: load libtvm_runtime only (17 s instead of 43 s to import under qemu);
        # the device side then has no compiler, which the RPC server does not need.
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
        env.update(PYTHONPATH=str(self.site), TVM_USE_RUNTIME_LIB="1", PYTHONDONTWRITEBYTECODE="1")
        return env

    def one_thread_environment(self, *sites: Path) -> dict:
        """``environment()`` for a simulated run (``deploy.sim``, one core: every runtime on one
        thread), with ``sites`` (e.g. the peers' site) ahead of the image's own on PYTHONPATH."""
        path = os.pathsep.join(str(site) for site in (*sites, self.site))
        return self.environment() | {"TVM_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def cache_dir() -> Path:
    return cache_root() / "emulated-pi"


def missing_tools() -> list[str]:
    """The host tools the emulated Pi needs that are not on PATH (and 'root' if not root)."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        missing.append("root (debootstrap)")
    return missing


def find_emulated_pi(root: Path | None = None) -> PiImage | None:
    """The built image under ``root`` (default: the cache), or None if not (completely) built."""
    image = PiImage(root or cache_dir())
    return image if image.is_complete() else None


def build_emulated_pi(root: Path | None = None, *, mirror: str | None = None, verify: bool = True) -> PiImage:
    """Build (or finish building) the emulated Pi under ``root``; a no-op when already built.

    Args:
        root: cache folder (default ``~/.cache/qfa-deploy/emulated-pi``).
        mirror: Debian mirror URL for debootstrap (default: $QFA_DEBIAN_MIRROR, else debootstrap's own).
        verify: import TVM under qemu once the image is built.
    """
    image = PiImage(root or cache_dir())
    if image.is_complete():
        return image
    missing = missing_tools()
    if missing:
        raise QfaError(f"the emulated Pi needs {', '.join(missing)} (Debian: apt-get install debootstrap qemu-user)")
    image.root.mkdir(parents=True, exist_ok=True)
    if not (image.rootfs / _DONE).is_file():
        _build_rootfs(image.rootfs, mirror or os.environ.get("QFA_DEBIAN_MIRROR"))
    if not (image.site / _DONE).is_file():
        _build_site(image.root / "wheels", image.site)
    if verify:
        version = _run_checked(image.command("-c", "import tvm; print(tvm.__version__)"), "importing TVM under qemu",
                               env=image.environment(), timeout=900)
        log.info("emulated Pi ready: TVM %s under qemu-aarch64", version.strip().splitlines()[-1])
    return image


def build_peer_site(image: PiImage) -> Path:
    """The aarch64 onnxruntime and LiteRT wheels unzipped beside the image (built once), for PYTHONPATH."""
    site = image.root / "peers"
    if not (site / _DONE).is_file():
        _build_site(image.root / "peer-wheels", site, PEER_WHEELS)
    return site


class EmulatedPi:
    """Serve TVM RPC from the emulated Pi, registered as ``key`` with a tracker on 127.0.0.1.

    With ``tracker_port=None`` a tracker is started on a free port (and stopped with the server);
    otherwise the one answering on 127.0.0.1:``tracker_port`` is used, or started there. Several
    boards may share a key (a fleet for ``lut build --workers N``): each waits for its own registration.
    A context manager; :meth:`stop` ends qemu, its forked session workers and our tracker.
    """

    def __init__(self, image: PiImage, *, key: str = DEFAULT_KEY, tracker_port: int | None = None,
                 ready_timeout: float = 600.0):
        self.image = image
        self.key = key
        self.tracker: ManagedProcess | None = None
        self.server: ManagedProcess | None = None
        try:
            boards = 0  # already registered under the key (another board of the same key)
            if tracker_port is not None and tracker_answers(LOOPBACK, tracker_port):
                self.tracker_port = tracker_port
                boards = tracker_keys(LOOPBACK, tracker_port).get(key, 0)
            else:
                self.tracker = start_tracker(tracker_port)
                self.tracker_port = self.tracker.port
            args = image.command(str(_SERVER_SCRIPT), "--tracker-host", LOOPBACK, "--tracker-port",
                                 str(self.tracker_port), "--key", key)
            self.server = ManagedProcess(f"emulated-pi-{key}", args, env=image.environment())
            start = time.monotonic()
            wait_for_key((LOOPBACK, self.tracker_port), key, timeout=ready_timeout, process=self.server,
                         servers=boards + 1)
            log.info("emulated Pi registered as %r after %.0f s", key, time.monotonic() - start)
        except BaseException:
            self.stop()
            raise

    @property
    def tracker_address(self) -> str:
        return f"{LOOPBACK}:{self.tracker_port}"

    def all_pids(self) -> list[int]:
        return sorted({pid for proc in (self.server, self.tracker) if proc for pid in proc.all_pids()})

    def stop(self) -> None:
        for proc in (self.server, self.tracker):
            if proc is not None:
                proc.stop()

    def __enter__(self) -> EmulatedPi:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _build_rootfs(rootfs: Path, mirror: str | None) -> None:
    partial = rootfs.with_name(rootfs.name + ".partial")
    if rootfs.exists():  # left by an older, unfinished layout: rebuild
        shutil.rmtree(rootfs)
    args = ["debootstrap", "--foreign", "--arch=arm64", "--variant=minbase", f"--include={PYTHON}", SUITE, str(partial)]
    if mirror:
        args.append(mirror)
    log.info("debootstrap (first stage) into %s", partial)
    _run_checked(args, "debootstrap", timeout=1800)
    debs = sorted((partial / "var" / "cache" / "apt" / "archives").glob("*.deb"))
    if not debs:
        raise QfaError(f"debootstrap left no .deb files in {partial}/var/cache/apt/archives")
    for deb in debs:
        _run_checked(["dpkg-deb", "-x", str(deb), str(partial)], f"unpacking {deb.name}", timeout=600)
    if not (partial / "usr" / "bin" / PYTHON).exists():
        raise QfaError(f"{PYTHON} is missing from the unpacked root filesystem {partial}")
    for deb in debs:  # the archives are not needed once unpacked
        deb.unlink()
    (partial / _DONE).write_text(f"{SUITE} arm64 minbase {PYTHON}\n")
    os.replace(partial, rootfs)


def _build_site(wheel_dir: Path, site: Path, wheels: tuple[str, ...] = WHEELS) -> None:
    wheel_dir.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
            "--python-version", "3.11", "--implementation", "cp", "-d", str(wheel_dir)]
    for platform in PLATFORMS:
        args += ["--platform", platform]
    log.info("pip download (aarch64 wheels) into %s", wheel_dir)
    _run_checked([*args, *wheels], "pip download of the aarch64 wheels", timeout=1800)
    wanted = {spec.split("==")[0].lower().replace("_", "-") for spec in wheels}
    wheels = sorted(w for w in wheel_dir.glob("*.whl") if w.name.split("-")[0].lower().replace("_", "-") in wanted)
    names = {w.name.split("-")[0].lower().replace("_", "-") for w in wheels}
    if not wanted <= names:
        raise QfaError(f"pip did not download {', '.join(sorted(wanted - names))} for aarch64")
    partial = site.with_name(site.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    if site.exists():
        shutil.rmtree(site)
    partial.mkdir()
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(partial)
    (partial / _DONE).write_text("\n".join(w.name for w in wheels) + "\n")
    os.replace(partial, site)


def _run_checked(args: list[str], what: str, *, env: dict | None = None, timeout: float) -> str:
    try:
        done = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env,
                              timeout=timeout)
    except FileNotFoundError:
        raise QfaError(f"{what}: {args[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise QfaError(f"{what} did not finish within {timeout:.0f} s") from None
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise QfaError(f"{what} failed (exit {done.returncode}): {tail}")
    return done.stdout
