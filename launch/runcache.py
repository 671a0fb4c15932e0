"""DVC's run-cache made safe for concurrent writers: what every DVC the launcher runs uses, in its own
process (the run-cache look-ups) and in its jobs' (`dvc repro`, `dvc commit`, through plan.dvc_cmd)."""
import os


def dvc_main(argv: list[str]) -> int:
    safe_run_cache()
    from dvc.cli import main
    return main(argv)


def safe_run_cache() -> None:
    """Make this process's DVC read and write the run-cache safely beside other processes writing it.

    DVC 3.67.1 (dvc/stage/cache.py) races with itself there. StageCache.save writes an entry to a
    temporary file in the entry's folder, <cache>/runs/<key[:2]>/<key>/.<random>.tmp, then renames it
    into place (dvc_objects.fs.utils.move, through a second temporary name <entry>.<random>.tmp).
    StageCache._load, which `dvc repro` calls before running each stage, takes the newest file of that
    folder, temporary files included, and _load_cache deletes one that does not parse or validate yet
    ("corrupted cache file"): the writer's rename then fails with [Errno 2] on its temporary file
    ("failed to reproduce ..."). A reader also fails itself, on a temporary file renamed after it listed
    the folder, or on the folder save made and has not written to yet.
    Here _load considers only entries renamed into place, and save writes again when its temporary file
    was deleted under it (by a DVC without this, such as a plain `dvc repro` elsewhere on the cache)."""
    from dvc.stage import cache as stage_cache

    cls = stage_cache.StageCache
    if getattr(cls, "_launch_safe", False):
        return

    def _load(self, stage):
        key = stage_cache._get_stage_hash(stage)
        if not key:
            return None
        folder = self._get_cache_dir(key)
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return None
        entries = []
        for name in names:
            if name.endswith(".tmp"):   # a writer's, not renamed into place yet (fs.utils.tmp_fname)
                continue
            try:
                entries.append((os.path.getmtime(os.path.join(folder, name)), name))
            except FileNotFoundError:   # removed since (dvc gc)
                continue
        return (self._load_cache(key, max(entries)[1]) or None) if entries else None

    save = cls.save

    def save_again_if_its_temporary_went(self, stage):
        for attempt in range(5):
            try:
                return save(self, stage)
            except FileNotFoundError as e:
                name = str(e.filename or "")
                if attempt == 4 or not (name.endswith(".tmp") and name.startswith(self.cache_dir + os.sep)):
                    raise

    cls._load, cls.save, cls._launch_safe = _load, save_again_if_its_temporary_went, True
