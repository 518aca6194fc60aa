"""Builds zentra-client. The Python code for the contracts in ../../proto is generated at every
build with grpcio-tools (a build requirement, so nothing else is needed and nothing generated is
committed): the wheel always matches the contracts it was built from."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONTRACTS = Path(__file__).resolve().parent.parent.parent / "proto"


class GenerateContracts(build_py):
    """Builds the hand-written packages, then generates the `zentra.*` packages beside them."""

    def run(self):
        super().run()
        generate(Path(self.build_lib))


def generate(out: Path) -> None:
    import grpc_tools
    from grpc_tools import protoc

    sources = sorted(str(path.relative_to(CONTRACTS)) for path in CONTRACTS.rglob("*.proto"))
    if not sources:
        raise SystemExit(f"no contracts under {CONTRACTS}: build from the repository")
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{CONTRACTS}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *sources,
        ]
    )
    if status != 0:
        raise SystemExit(f"generating the contracts failed (protoc exit {status})")
    # The generated modules import one another as `zentra.<service>.v1.<file>_pb2`: make each
    # directory a package.
    root = out / "zentra"
    for directory in [root, *(path for path in root.rglob("*") if path.is_dir())]:
        (directory / "__init__.py").touch()


setup(cmdclass={"build_py": GenerateContracts})
