"""The multi-model front end's model cache: resolve a TargetModel, download, extract, load, evict.

This plays the part SageMaker's front end plays for a multi-model endpoint: a TargetModel is a key under the store
prefix; on first use it is downloaded, checked, extracted under an opaque model name and loaded into the container
with ``POST /models``. When the container answers 507, or a configured budget (models or memory) would be exceeded,
the least recently used model is unloaded first. Concurrent first requests for one model share one load.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil
import requests

from mme.cache_storage import DEFAULT_MAX_CACHE_BYTES, CacheStorage
from mme.container import LocalContainer, Response
from mme.errors import ModelError, ModelNotReadyError, ServiceUnavailableError, ValidationError
from mme.metrics import EndpointMetrics
from mme.store import ModelNotFoundError, ModelStore, StoreError

logger = logging.getLogger(__name__)

#: Default seconds a model may take to load into the container (`CachePolicy.load_timeout_seconds`).
LOAD_TIMEOUT_SECONDS = 120.0
#: Default seconds a model version that does not fit even alone is refused at once (`CachePolicy.too_large_seconds`).
TOO_LARGE_SECONDS = 600.0


@dataclass(frozen=True, kw_only=True)
class CachePolicy:
    """How many models stay loaded, and how much disk their copies may take.

    - ``max_loaded_models`` (default: no limit): the most models loaded at once.
    - ``memory_budget_bytes`` (default: no limit): memory the loaded models may take together, as the kernel
      charges it (the container's :meth:`~mme.container.LocalContainer.models_memory_bytes`: the model workers'
      summed PSS on the host, the container's cgroup charge above its charge with no model in an image); a model is
      unloaded before a load that would, by the current per-model average of that measure, exceed it. MMS's own
      memory is not counted: it is there with no model loaded, and no eviction can shrink it.
    - ``too_large_seconds`` (default 600): a model version found not to fit in the container's memory even with no
      other model loaded is refused at once for this long (no eviction, no load attempt); a changed archive is a new
      version and is tried again at once. Bounded, because memory can grow meanwhile (other processes on the host
      exit, or the container is restarted with a larger limit).
    - ``keep_loaded`` (default True): False unloads each model after its invocation, like SageMaker's
      ``ModelCacheSetting=Disabled``.
    - ``load_wait_seconds`` (default 60, SageMaker's invocation timeout): how long a request waits for a cold
      load before it gets ``ModelNotReadyException``; the load goes on.
    - ``load_timeout_seconds`` (default 120): a load that takes longer is abandoned (the model unregistered, its
      workers stopped, its copy removed) and fails with ``ModelError``, so a hanging load cannot hold up the loads
      queued behind it for more than this. Loads run one at a time, so budgets are never overshot.
    - ``max_archive_bytes`` (default 10 GiB): larger archives are refused before download.
    - ``max_cache_bytes`` (default 20 GiB, twice ``max_archive_bytes``: what the largest accepted archive of hardly
      compressible weights needs while it is extracted): the most the extracted copies and the downloads in flight
      may take in ``cache_dir``, like an instance's storage on AWS; least recently used copies are deleted first
      (see :mod:`mme.cache_storage`). Without a limit, a cache kept across runs grows by every model ever tried.
    """

    max_loaded_models: int | None = None
    memory_budget_bytes: int | None = None
    keep_loaded: bool = True
    load_wait_seconds: float = 60.0
    load_timeout_seconds: float = LOAD_TIMEOUT_SECONDS
    too_large_seconds: float = TOO_LARGE_SECONDS
    max_archive_bytes: int = 10 * 1024**3
    max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES


@dataclass(frozen=True)
class LoadFailure:
    """The handler's account of a failed load (its load-error file): why, and whether the model needs more than all
    the memory the container can have, so that unloading other models cannot help."""

    reason: str
    exceeds_total_memory: bool = False


@dataclass(eq=False)
class LoadedModel:
    """A model loaded in the container."""

    key: str
    name: str
    path: Path
    last_used: float = field(default_factory=time.monotonic)
    in_flight: int = 0


class ModelCache:
    """Loads TargetModels into one container on demand and keeps the loaded set within the policy."""

    def __init__(
        self,
        *,
        store: ModelStore,
        container: LocalContainer,
        cache_dir: Path,
        policy: CachePolicy,
        metrics: EndpointMetrics,
    ) -> None:
        self.store = store
        self.container = container
        # Absolute: the container resolves a model's url against its own root, not our working directory.
        self.cache_dir = cache_dir.resolve()
        self.policy = policy
        self.metrics = metrics
        self._loaded: dict[str, LoadedModel] = {}
        self._loading: dict[str, asyncio.Task[LoadedModel]] = {}
        self._background: set[asyncio.Task[None]] = set()
        # Model versions (names) that do not fit even alone -> when that was found (monotonic), and the container's
        # answer then, repeated to every request refused meanwhile.
        self._too_large: dict[str, tuple[float, str, Response]] = {}
        # Loads and evictions change the container's loaded set one at a time, so budgets are never overshot.
        self._capacity = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self.storage = CacheStorage(self.cache_dir, max_bytes=policy.max_cache_bytes)
        self.storage.prepare()  # an unwritable folder raises CacheStorageError: mme serve refuses to start

    @property
    def loaded(self) -> dict[str, LoadedModel]:
        """TargetModel -> loaded model (a snapshot)."""
        return dict(self._loaded)

    async def __aenter__(self) -> ModelCache:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=120))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in [*self._loading.values(), *self._background]:
            task.cancel()
        if self._session is not None:
            await self._session.close()

    def forget_all(self) -> None:
        """The container restarted: nothing is loaded any more."""
        self._loaded.clear()
        self.metrics.loaded_models.set(0)

    # --- talking to the container -------------------------------------------------------------------------------

    async def _call(self, method: str, path: str, **kwargs: object) -> Response:
        assert self._session is not None, "use ModelCache as an async context manager"
        if not self.container.running:
            raise ServiceUnavailableError("the model container is not running; it is being restarted")
        try:
            async with self._session.request(method, self.container.base_url + path, **kwargs) as response:
                body = await response.read()
                return Response.of(response.status, body, response.headers)
        except aiohttp.ClientConnectionError as error:
            raise ServiceUnavailableError(f"the model container does not answer: {error}") from None

    async def _unload_from_container(self, name: str) -> Response:
        return await self._call("DELETE", f"/models/{name}")

    async def _discard_failed_load(self, name: str) -> Response:
        try:
            return await asyncio.to_thread(self.container.client.discard, name)
        except requests.RequestException as error:
            raise ServiceUnavailableError(f"the model container does not answer: {error}") from None

    # --- loading ------------------------------------------------------------------------------------------------

    async def acquire(self, key: str) -> LoadedModel:
        """The loaded model for ``key``, loading it on first use; the caller must :meth:`release` it.

        Raises:
            ValidationError: no archive under ``key``, or it is refused (too large, hostile, unreadable).
            ModelError: the container refused to load it.
            ModelNotReadyError: the load takes longer than the policy's wait; it goes on in the background.
            ServiceUnavailableError: the container is down.
        """
        model = self._loaded.get(key)
        if model is not None:
            self.metrics.cache_hits.inc()
        else:
            self.metrics.cache_misses.inc()
            task = self._loading.get(key)
            if task is None:
                task = asyncio.create_task(self._load(key), name=f"load {key}")
                self._loading[key] = task
                task.add_done_callback(self._load_finished)
            try:
                model = await asyncio.wait_for(asyncio.shield(task), timeout=self.policy.load_wait_seconds)
            except TimeoutError:
                raise ModelNotReadyError(
                    f"model {key} is still loading after {self.policy.load_wait_seconds:g} s; try again"
                ) from None
        model.in_flight += 1
        model.last_used = time.monotonic()
        return model

    async def release(self, model: LoadedModel) -> None:
        """Done with an acquired model; with the cache disabled, the last user unloads it."""
        model.in_flight -= 1
        model.last_used = time.monotonic()
        if not self.policy.keep_loaded and model.in_flight == 0 and self._loaded.get(model.key) is model:
            async with self._capacity:
                if model.in_flight == 0 and self._loaded.get(model.key) is model:
                    await self._evict(model, reason="model cache disabled")

    def _load_finished(self, task: asyncio.Task[LoadedModel]) -> None:
        key = task.get_name().removeprefix("load ")
        if self._loading.get(key) is task:
            del self._loading[key]
        # A failed load that every waiter gave up on (429) is logged here rather than lost.
        if not task.cancelled() and task.exception() is not None:
            logger.info("loading %s failed: %s", key, task.exception())

    async def _load(self, key: str) -> LoadedModel:
        try:
            info = await asyncio.to_thread(self.store.stat, key)
        except ModelNotFoundError as error:
            raise ValidationError(f"Failed to download model data for TargetModel {key!r}: {error}") from None
        except StoreError as error:
            raise ValidationError(str(error)) from None
        if info.size > self.policy.max_archive_bytes:
            raise ValidationError(
                f"model data for {key!r} is {info.size} bytes, above the limit of {self.policy.max_archive_bytes}"
            )
        # Opaque, and new whenever the archive changes, so a rewritten key never serves a stale copy.
        name = "m" + hashlib.sha256(f"{self.store.uri}\0{key}\0{info.version}".encode()).hexdigest()[:24]
        path = self.storage.models_dir / name
        self._refuse_if_too_large(key, name)
        self.storage.hold(name, key)  # before looking: a clean-up for another install must not take it meanwhile
        if not path.is_dir():
            await self._download_and_extract(key, info.size, name, path)

        async with self._capacity:
            await self._make_room()
            started = time.monotonic()
            workers_before = {process.pid for process in self.container.worker_processes()}
            try:
                await asyncio.wait_for(
                    self._load_into_container(key, name, path, workers_before), self.policy.load_timeout_seconds
                )
            except TimeoutError:
                self._abandon_load(key, name)
                message = (
                    f"model {key} did not load within {self.policy.load_timeout_seconds:g} s; its load was abandoned"
                )
                raise ModelError(message, original_status=0, original_message=message) from None
            elapsed = time.monotonic() - started
            self.metrics.load_seconds.labels(model=self.metrics.model_label(key)).observe(elapsed)
            self.metrics.loads.inc()
            model = LoadedModel(key=key, name=name, path=path)
            self._loaded[key] = model
            self.metrics.loaded_models.set(len(self._loaded))
            logger.info("loaded %s as %s in %.2f s (%d loaded)", key, name, elapsed, len(self._loaded))
            return model

    def _abandon_load(self, key: str, name: str) -> None:
        """Stop a load that hangs: kill its workers now, and unregister it in the background.

        MMS answers the ``DELETE`` only once it gives up on the stuck load itself (its own response timeout), so
        nobody waits for that; a new load of the model meanwhile gets 409 and unregisters it first. The extracted copy
        stays: the archive was fine, its load hung.
        """
        killed = self._kill_workers_of(name)
        logger.error(
            "loading %s took longer than %g s: abandoned it, stopped %d worker processes",
            key, self.policy.load_timeout_seconds, killed,
        )  # fmt: skip

        async def unregister() -> None:
            removed = await self._discard_failed_load(name)
            self._kill_workers_of(name)  # any worker MMS started again for it meanwhile
            logger.info("unregistered the abandoned load of %s [%d]", key, removed.status)

        task = asyncio.create_task(unregister(), name=f"abandon {key}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _load_into_container(self, key: str, name: str, path: Path, workers_before: set[int]) -> None:
        """``POST /models`` until it answers 200, cleaning up after a failed attempt and evicting on 507.

        Raises:
            ModelError: the container refused the model (its copy is removed).
        """
        attempts_left = 1
        while True:
            self._take_load_error(name)  # a reason left by an earlier attempt is not this one's
            answer = await self._call(
                "POST", "/models", json={"model_name": name, "url": self.container.model_url(path)}
            )
            if answer.status == 200:
                return
            failure = self._take_load_error(name)
            reason = failure.reason if failure is not None else None
            # MMS keeps a failed model registered with no workers (and may leave a worker blocked): clean up.
            removed = await self._discard_failed_load(name)
            self._kill_new_workers(workers_before)
            logger.info("loading %s answered %d; unregistered it [%d]", key, answer.status, removed.status)
            if answer.status == 409 and attempts_left > 0:
                # Registered but not serving (a load that failed before): now unregistered, so load again.
                attempts_left -= 1
                continue
            if answer.status == 507:
                # The handler can tell that no eviction would help: refuse now, and every other model stays.
                victim = None if failure is not None and failure.exceeds_total_memory else self._least_recently_used()
                if victim is not None:
                    await self._evict(victim, reason=f"container out of memory loading {key}")
                    continue
                await asyncio.to_thread(shutil.rmtree, path, True)  # a failed load leaves nothing in the cache
                raise self._remember_too_large(key, name, reason, answer)
            await asyncio.to_thread(shutil.rmtree, path, True)
            raise ModelError(
                f"the container could not load model {key}: {reason or answer.text}",
                original_status=answer.status,
                original_message=answer.text,
            )

    def _take_load_error(self, name: str) -> LoadFailure | None:
        """The handler's account of the last failed load of ``name`` (MMS says only "Failed to start workers"), or
        None when it left none. The file is JSON (``handler.service``); plain text, from an older image, is the
        reason alone."""
        path = self.container.load_error_file(name)
        try:
            text = path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return None
        path.unlink(missing_ok=True)
        try:
            left = json.loads(text)
        except ValueError:
            left = None
        if not isinstance(left, dict):
            return LoadFailure(text) if text else None
        return LoadFailure(str(left.get("reason") or ""), exceeds_total_memory=left.get("exceeds_total_memory") is True)

    def _remember_too_large(self, key: str, name: str, reason: str | None, answer: Response) -> ModelError:
        """The error for a model version that does not fit even alone, remembered so that retries are refused at
        once (:meth:`_refuse_if_too_large`) instead of emptying the cache again."""
        message = (
            f"model {key} does not fit in the container's memory even with no other model loaded"
            + (f": {reason}" if reason else "")
            + f"; it is refused for {self.policy.too_large_seconds:g} s, or until its archive changes"
        )
        now = time.monotonic()
        # Expired refusals go here too, so versions never asked for again do not pile up.
        self._too_large = {
            other: found for other, found in self._too_large.items() if now - found[0] < self.policy.too_large_seconds
        }
        self._too_large[name] = (now, message, answer)
        logger.error("%s", message)
        return ModelError(message, original_status=answer.status, original_message=answer.text)

    def _refuse_if_too_large(self, key: str, name: str) -> None:
        """Raise the remembered ``ModelError`` if version ``name`` of ``key`` was found not to fit even alone less
        than ``too_large_seconds`` ago."""
        found = self._too_large.get(name)
        if found is None:
            return
        found_at, message, answer = found
        if time.monotonic() - found_at >= self.policy.too_large_seconds:
            del self._too_large[name]
            return
        logger.info("refused %s at once: it did not fit even alone %.0f s ago", key, time.monotonic() - found_at)
        raise ModelError(message, original_status=answer.status, original_message=answer.text)

    async def _download_and_extract(self, key: str, size: int, name: str, path: Path) -> None:
        """Install ``key`` into ``path`` within the cache's disk limit (:meth:`CacheStorage.install`: its errors)."""
        await self.storage.install(
            key=key,
            name=name,
            archive_bytes=size,
            destination=path,
            download=lambda archive: self._download(key, size, archive),
            in_use=self._copies_in_use,
            unload_least_recently_used=self._unload_for_disk,
        )

    def _download(self, key: str, size: int, archive: Path) -> None:
        started = time.monotonic()
        try:
            self.store.download(key, archive)
        except Exception as error:  # OSError, or any of botocore's errors, which share no useful base class
            archive.unlink(missing_ok=True)
            cache_problem = self.storage.write_error(error)
            if cache_problem is not None:  # the cache's disk, not the store: CacheStorage words it
                raise cache_problem from None
            raise ValidationError(f"Failed to download model data for TargetModel {key!r}: {error}") from None
        downloaded = archive.stat().st_size
        if downloaded != size:
            archive.unlink(missing_ok=True)
            raise ValidationError(f"model data for {key!r} changed during download ({downloaded} != {size} bytes)")
        self.metrics.download_seconds.observe(time.monotonic() - started)

    def _copies_in_use(self) -> dict[str, float]:
        """Model folders that must stay (loaded, or installed for a load going on) -> last use, epoch seconds."""
        now, wall_clock = time.monotonic(), time.time()
        in_use = dict.fromkeys(self.storage.installed_for(self._loading), wall_clock)
        in_use.update({model.name: wall_clock - (now - model.last_used) for model in self._loaded.values()})
        return in_use

    async def _unload_for_disk(self) -> Path | None:
        """Unload the least recently used model so its copy can be deleted: its folder, or None if none is loaded."""
        async with self._capacity:
            victim = self._least_recently_used()
            if victim is None:
                return None
            await self._evict(victim, reason=f"model cache on disk at its limit of {self.policy.max_cache_bytes} bytes")
            return victim.path

    def _kill_new_workers(self, before: set[int]) -> None:
        registered = {process.pid for process in self.container.worker_processes()} - before
        # Workers started for a failed load serve no model: MMS can leave one blocked forever (DESIGN.md).
        for pid in registered:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()

    # --- eviction -----------------------------------------------------------------------------------------------

    def _least_recently_used(self, *, exclude: LoadedModel | None = None) -> LoadedModel | None:
        candidates = [model for model in self._loaded.values() if model is not exclude]
        if not candidates:
            return None
        # Prefer a model nobody is using right now.
        return min(candidates, key=lambda model: (model.in_flight > 0, model.last_used))

    def workers_memory_bytes(self) -> int:
        """Memory the loaded models take right now, as the kernel charges it (the container says how:
        :meth:`~mme.container.LocalContainer.models_memory_bytes`), never summed RSS, which counts the libraries
        every worker shares once per worker."""
        return self.container.models_memory_bytes()

    async def _make_room(self) -> None:
        limit = self.policy.max_loaded_models
        while limit is not None and len(self._loaded) >= limit:
            victim = self._least_recently_used()
            assert victim is not None
            await self._evict(victim, reason=f"at most {limit} loaded models")
        budget = self.policy.memory_budget_bytes
        while budget is not None and self._loaded:
            used = await asyncio.to_thread(self.workers_memory_bytes)
            per_model = used / len(self._loaded)
            if used + per_model <= budget:
                break
            victim = self._least_recently_used()
            assert victim is not None
            await self._evict(victim, reason=f"memory budget {budget} bytes ({used} used)")

    async def _evict(self, model: LoadedModel, *, reason: str) -> None:
        started = time.monotonic()
        self._loaded.pop(model.key, None)
        self.metrics.loaded_models.set(len(self._loaded))
        answer = await self._unload_from_container(model.name)
        # Its copy's last use, kept on disk so the order of deleting unloaded copies survives a restart.
        self.storage.record_use(model.path, time.time() - (time.monotonic() - model.last_used))
        elapsed = time.monotonic() - started
        self.metrics.unload_seconds.observe(elapsed)
        self.metrics.unloads.inc()
        if reason != "model cache disabled":
            self.metrics.evictions.inc()
        logger.info("unloaded %s (%s) in %.2f s: %s [%d]", model.key, model.name, elapsed, reason, answer.status)

    async def make_room_after_oom(self, model: LoadedModel) -> bool:
        """The container ran out of memory predicting with ``model``: unload another model. False if none is left."""
        async with self._capacity:
            victim = self._least_recently_used(exclude=model)
            if victim is None:
                return False
            await self._evict(victim, reason=f"container out of memory predicting with {model.key}")
            return True

    async def replace_unresponsive(self, model: LoadedModel) -> None:
        """``model`` did not answer within the invocation timeout: stop its workers and unload it, so the next request
        loads it afresh instead of queueing behind a stuck worker (MMS itself waits out its own, longer, timeout)."""
        async with self._capacity:
            if self._loaded.get(model.key) is not model:
                return  # already replaced by a request that timed out with it
            self.forget(model)
            killed = self._kill_workers_of(model.name)
            removed = await self._discard_failed_load(model.name)
            self.metrics.unloads.inc()
            logger.error(
                "%s (%s) did not answer in time: stopped %d worker processes and unloaded it [%d]; the next request "
                "loads it again", model.key, model.name, killed, removed.status,
            )  # fmt: skip

    def _kill_workers_of(self, name: str) -> int:
        """Kill the worker processes of model ``name`` (MMS names the model on each worker's command line, and the
        process that predicts is a fork of the one MMS started); how many were killed."""
        killed = 0
        for process in self.container.worker_processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                arguments = process.cmdline()
                if any(flag == "--model-name" and value == name for flag, value in itertools.pairwise(arguments)):
                    process.kill()
                    killed += 1
        return killed

    def forget(self, model: LoadedModel) -> None:
        """The container no longer has ``model`` (it answered 404): load it again on next use."""
        if self._loaded.get(model.key) is model:
            del self._loaded[model.key]
            self.metrics.loaded_models.set(len(self._loaded))

    async def invoke(self, model: LoadedModel, body: bytes, headers: dict[str, str]) -> Response:
        """``POST /models/{name}/invoke`` on the container."""
        return await self._call("POST", f"/models/{model.name}/invoke", data=body, headers=headers)
