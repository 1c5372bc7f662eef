"""The trust gate, against real malicious files: no code in a TorchScript archive, an
AOTInductor package or an ExportedProgram ``.pt2`` runs through ``xcam.load`` or any command
unless the caller opts in (``trust_code=True``, ``--trust-code``); with the opt-in it does
run, which proves each payload is real. The files are built by ``malicious_files``."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import malicious_files as mf
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import xcam
from xcam.cli import main
from xcam.core.errors import ModelSpecError, UntrustedFileError, XCamError

# (kind, file name, format): every kind of malicious file, and the name it is tested under
KINDS = {
    "torchscript": ("evil.ts", "torchscript"),
    "torchscript-long-suffix": ("evil.torchscript", "torchscript"),
    "aoti": ("evil_aoti.pt2", "pt2"),
    "aoti-minimal": ("evil_aoti_min.pt2", "pt2"),
    "exported-program": ("evil_ep.pt2", "pt2"),
}
# the real AOTI package is compiled once per session (15-30 s on 2 cores): slow
KIND_PARAMS = [
    pytest.param(kind, marks=pytest.mark.slow) if kind == "aoti" else kind for kind in KINDS
]


def _timed(label: str, timings: dict[str, float], build: Callable[[], Path]) -> Path:
    start = time.perf_counter()
    path = build()
    timings[label] = time.perf_counter() - start
    return path


@pytest.fixture(scope="session")
def build_timings() -> Iterator[dict[str, float]]:
    """Seconds each malicious file took to build (printed with ``-s``)."""
    timings: dict[str, float] = {}
    yield timings
    if timings:
        print("\nmalicious file builds: " + ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))


@pytest.fixture(scope="session")
def evil_library(tmp_path_factory: pytest.TempPathFactory, build_timings: dict[str, float]) -> Path:
    """A shared library whose constructor creates ``$XCAM_MARKER``."""
    if mf.c_compiler() is None:
        pytest.skip("no C compiler (gcc or cc) to build the malicious shared library")
    folder = tmp_path_factory.mktemp("evil_library")
    return _timed("library", build_timings, lambda: mf.build_library(folder / "evil.so"))


@pytest.fixture(scope="session")
def real_aoti_package(
    tmp_path_factory: pytest.TempPathFactory, build_timings: dict[str, float]
) -> Path:
    """A genuine AOTInductor package of a tiny model, compiled once per session."""
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("no C++ compiler: AOTInductor can't compile a package")
    folder = tmp_path_factory.mktemp("real_aoti")
    return _timed(
        "real AOTI package", build_timings, lambda: mf.build_real_aoti_package(folder / "m.pt2")
    )


@pytest.fixture(scope="session")
def evil_sources(
    tmp_path_factory: pytest.TempPathFactory, build_timings: dict[str, float]
) -> dict[str, Path]:
    """The cheap malicious files, built once: kind -> path (copied per test)."""
    folder = tmp_path_factory.mktemp("evil_sources")
    ts = _timed("torchscript", build_timings, lambda: mf.build_torchscript(folder / "evil.ts"))
    return {
        "torchscript": ts,
        "torchscript-long-suffix": ts,
        "exported-program": _timed(
            "exported program",
            build_timings,
            lambda: mf.build_exported_program(folder / "ep.pt2"),
        ),
    }


@dataclass
class Evil:
    """One malicious file in the test's folder, and a way to tell whether its code ran."""

    kind: str
    path: Path
    format: str
    marker: Path
    capfd: pytest.CaptureFixture[str]
    seen: list[str] = field(default_factory=list)

    def ran(self, *outputs: str) -> bool:
        """Whether the payload ran: the marker file exists, or (TorchScript) its token was
        printed, to the captured file descriptors or to one of ``outputs``."""
        captured = self.capfd.readouterr()
        self.seen += [captured.out, captured.err, *outputs]
        return self.marker.exists() or any(mf.TORCHSCRIPT_TOKEN in s for s in self.seen)


def _source(request: pytest.FixtureRequest, kind: str) -> Path:
    if kind in ("aoti", "aoti-minimal"):
        library = request.getfixturevalue("evil_library")
        folder = request.getfixturevalue("tmp_path_factory").mktemp("aoti_build")
        if kind == "aoti":
            package = request.getfixturevalue("real_aoti_package")
            return mf.plant_library(package, library, folder / "evil.pt2")
        return mf.build_minimal_aoti_package(library, folder / "evil.pt2")
    return request.getfixturevalue("evil_sources")[kind]


@pytest.fixture(params=KIND_PARAMS)
def evil(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> Evil:
    """A fresh copy of one malicious file, with ``$XCAM_MARKER`` pointing into the test's
    folder (and ``$TMPDIR`` too: the AOTI loader extracts packages there)."""
    kind = request.param
    name, fmt = KINDS[kind]
    path = tmp_path / name
    shutil.copyfile(_source(request, kind), path)
    marker = tmp_path / "pwned"
    monkeypatch.setenv(mf.MARKER_ENV, str(marker))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    capfd.readouterr()  # the builds' noise
    return Evil(kind, path, fmt, marker, capfd)


@pytest.fixture()
def loaders(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of torch's loaders called during the test (each still runs as before)."""
    # imported so that their attributes can be patched
    import torch._inductor.package
    import torch.export.pt2_archive._package

    calls: list[str] = []
    targets = [
        "torch.jit.load",
        "torch._C.import_ir_module",
        "torch.export.load",
        "torch.export.pt2_archive._package.load_pt2",
        "torch._inductor.aoti_load_package",
        "torch._inductor.package.load_package",
        "torch._C._aoti.AOTIModelPackageLoader",
        "torch.load",
    ]
    for target in targets:
        original = functools.reduce(getattr, target.split(".")[1:], torch)

        def spy(*args, _original=original, _target=target, **kwargs):
            calls.append(_target)
            return _original(*args, **kwargs)

        monkeypatch.setattr(target, spy)
    return calls


@pytest.fixture()
def image(tmp_path: Path) -> Path:
    """A valid image, so that explain fails (if it does) for the model, not the image."""
    path = tmp_path / "img.png"
    Image.new("RGB", (8, 8), (120, 30, 200)).save(path)
    return path


# ---- the payloads are real --------------------------------------------------------------


def _raw_load(evil: Evil) -> None:
    """Open the file with torch's own loader, as xcam would without the gate."""
    if evil.format == "torchscript":
        torch.jit.load(str(evil.path))
    elif evil.kind.startswith("aoti"):
        torch._inductor.aoti_load_package(str(evil.path))
    else:
        program = torch.export.load(str(evil.path))
        assert program.module()(torch.ones(1, 2)).shape == (1, 2)  # loads and works


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_the_payloads_are_real(evil: Evil) -> None:
    """torch's own loaders run each file's code (an AOTI load then fails: the library is
    not a model, but its constructor has already run)."""
    assert not evil.ran()
    if evil.kind.startswith("aoti"):
        with pytest.raises(RuntimeError, match="AOTInductorModelContainer"):
            _raw_load(evil)
    else:
        _raw_load(evil)
    assert evil.ran()


@pytest.mark.parametrize("kind", ["aoti-minimal", pytest.param("aoti", marks=pytest.mark.slow)])
def test_torch_export_load_also_runs_an_aoti_library(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why every .pt2 is gated, not just the ones that look like AOTI packages:
    ``torch.export.load`` goes through ``load_pt2``, which loads any AOTI model inside."""
    marker = tmp_path / "pwned"
    monkeypatch.setenv(mf.MARKER_ENV, str(marker))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    with contextlib.suppress(RuntimeError):
        torch.export.load(str(_source(request, kind)))
    assert marker.exists()


# ---- xcam.load -------------------------------------------------------------------------


def test_xcam_load_refuses_without_trust(evil: Evil, loaders: list[str]) -> None:
    """Refused before any torch loader runs, with the format, the reason and the opt-in."""
    with pytest.raises(UntrustedFileError) as info:
        xcam.load(evil.path)
    assert isinstance(info.value, ModelSpecError)
    message = str(info.value)
    assert evil.path.name in message and evil.format in message.lower()
    assert "trust_code=True" in message and "--trust-code" in message
    if evil.format == "torchscript":
        assert "program" in message  # why: loading runs its code
    else:  # a .pt2 is refused before xcam can know which kind it is: both reasons
        assert "librar" in message and "unpickl" in message
    assert loaders == []
    assert not evil.ran()


def test_xcam_load_with_trust_runs_the_payload(evil: Evil) -> None:
    """The opt-in really opens the file (these are not xcam exports, so it then fails)."""
    with contextlib.suppress(XCamError):
        xcam.load(evil.path, trust_code=True)
    assert evil.ran()


@pytest.mark.parametrize("suffix", [".ts", ".torchscript", ".jit", ".pt", ".TS", ".Pt2", ".pt2"])
def test_every_code_carrying_suffix_is_gated(
    suffix: str,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    evil_sources: dict[str, Path],
    loaders: list[str],
) -> None:
    """Every TorchScript suffix and .pt2, in any case, is refused (a suffix is a name: the
    gate can't trust it to mean a harmless file)."""
    path = tmp_path / f"model{suffix}"
    kind = "exported-program" if suffix.lower() == ".pt2" else "torchscript"
    shutil.copyfile(evil_sources[kind], path)
    with pytest.raises(UntrustedFileError, match="--trust-code"):
        xcam.load(path)
    assert loaders == []
    assert mf.TORCHSCRIPT_TOKEN not in capfd.readouterr().out


@pytest.mark.parametrize("name", ["junk.ts", "junk.torchscript", "junk.pt2"])
def test_the_gate_comes_before_the_contents(name: str, tmp_path: Path, loaders: list[str]) -> None:
    """A file that isn't even a zip is refused as untrusted, not as unreadable: nothing
    read it before the gate."""
    path = tmp_path / name
    path.write_bytes(b"\x00not a model\xff" * 8)
    with pytest.raises(UntrustedFileError):
        xcam.load(path)
    assert loaders == []


@pytest.mark.parametrize("suffix", [".onnx", ".zip", ""])
def test_a_renamed_file_does_not_sneak_past(evil: Evil, suffix: str) -> None:
    """The suffix picks the loader: a TorchScript or .pt2 zip named ``.onnx`` goes to ONNX
    Runtime, which can't parse it; an unknown suffix is refused. No payload runs."""
    path = evil.path.with_name(f"evil{suffix}")
    evil.path.rename(path)
    with pytest.raises(ModelSpecError) as info:
        xcam.load(path)
    if suffix == ".onnx":  # read as ONNX (which carries no code), and not readable as that
        assert not isinstance(info.value, UntrustedFileError)
        assert "onnx" in str(info.value).lower()
    with contextlib.suppress(XCamError):
        xcam.load(path, trust_code=True)  # trust doesn't change which loader reads it
    res = CliRunner().invoke(main, ["layers", str(path), "--trust-code"])
    assert res.exit_code == 1
    assert not evil.ran(res.output)


# ---- the command line ------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """A command that takes a MODEL; ``loads``: it can load a file when trusted."""

    name: str
    args: Callable[[Path, Path, Path], list[str]]  # (model, image, out folder) -> argv
    loads: bool = True


COMMANDS = [
    Command("layers", lambda m, i, o: ["layers", str(m)]),
    Command("explain", lambda m, i, o: ["explain", str(m), str(i), "-o", str(o)]),
    Command("filters", lambda m, i, o: ["filters", str(m), "--layer", "lin", "-o", str(o)]),
    # export and bench refuse an exported file whatever the trust; they must not load it first
    Command("export", lambda m, i, o: ["export", str(m), "--out", str(o / "x.onnx")], False),
    Command(
        "bench",
        lambda m, i, o: [
            *("bench", "--models", str(m), "--methods", "gradcam", "--backends", "eager"),
            *("--batch", "1", "--repeats", "1", "--no-peers", "--json", str(o / "b.json")),
        ],
        False,
    ),
]
COMMAND_PARAMS = [pytest.param(c, id=c.name) for c in COMMANDS]


@pytest.mark.parametrize("command", COMMAND_PARAMS)
def test_commands_refuse_without_trust(
    command: Command, evil: Evil, image: Path, tmp_path: Path, loaders: list[str]
) -> None:
    """Exit code 1, one line (naming --trust-code where trust would help), nothing loaded,
    nothing run, nothing written."""
    out = tmp_path / "out"
    res = CliRunner().invoke(main, command.args(evil.path, image, out))
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1, res.output  # one line, no traceback
    if command.loads:
        assert "--trust-code" in lines[0]
    assert loaders == []
    assert not evil.ran(res.output)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("command", [p for p in COMMAND_PARAMS if p.values[0].loads])
def test_commands_with_trust_run_the_payload(
    command: Command, evil: Evil, image: Path, tmp_path: Path
) -> None:
    """--trust-code really loads the file (which then fails: it is not an xcam export)."""
    res = CliRunner().invoke(
        main, [*command.args(evil.path, image, tmp_path / "o"), "--trust-code"]
    )
    assert evil.ran(res.output), res.output


def test_export_refuses_an_exported_file_even_when_trusted(
    evil: Evil, tmp_path: Path, loaders: list[str]
) -> None:
    """Export needs the original model; trusting the file doesn't make it load it."""
    res = CliRunner().invoke(
        main, ["export", str(evil.path), "--out", str(tmp_path / "x.onnx"), "--trust-code"]
    )
    assert res.exit_code == 1 and "exported file" in res.output
    assert loaders == []
    assert not evil.ran(res.output)
    assert not (tmp_path / "x.onnx").exists()


def test_the_old_flag_name_still_opts_in(
    evil_sources: dict[str, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """``--trust-torchscript``, the flag's old name, is an alias of ``--trust-code``."""
    path = tmp_path / "evil.ts"
    shutil.copyfile(evil_sources["torchscript"], path)
    res = CliRunner().invoke(main, ["layers", str(path), "--trust-torchscript"])
    assert mf.TORCHSCRIPT_TOKEN in res.output + capfd.readouterr().out


@pytest.fixture()
def xcam_exe() -> str:
    """The installed ``xcam`` script of this environment."""
    exe = Path(sys.executable).with_name("xcam")
    if not exe.exists():
        pytest.skip(f"no xcam entry point beside {sys.executable}")
    return str(exe)


@pytest.mark.slow
def test_the_installed_command_as_a_subprocess(
    xcam_exe: str, evil_sources: dict[str, Path], evil_library: Path, tmp_path: Path
) -> None:
    """The real entry point, output read from the process: refused, then opted in."""
    ts = tmp_path / "evil.ts"
    shutil.copyfile(evil_sources["torchscript"], ts)
    aoti = mf.build_minimal_aoti_package(evil_library, tmp_path / "evil.pt2")
    marker = tmp_path / "pwned"
    env = {**os.environ, mf.MARKER_ENV: str(marker), "TMPDIR": str(tmp_path)}

    def xcam_layers(path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [xcam_exe, "layers", str(path), *flags],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )

    for path in (ts, aoti):
        proc = xcam_layers(path)
        assert proc.returncode == 1 and "--trust-code" in proc.stderr
        assert mf.TORCHSCRIPT_TOKEN not in proc.stdout + proc.stderr and not marker.exists()
    assert mf.TORCHSCRIPT_TOKEN in xcam_layers(ts, "--trust-code").stdout
    xcam_layers(aoti, "--trust-code")
    assert marker.exists()
