"""The cache's one rule for concurrent writers: a lock per entry, across processes."""
import subprocess
import sys
import time

from mechlib.core.cache import cache_lock, is_checkpoint, source_record


def test_a_second_process_waits_for_the_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHLIB_CACHE", str(tmp_path))
    code = ("import time, sys; from mechlib.core.cache import cache_lock\n"
            "with cache_lock('organism-x'):\n    print(time.time())")
    with cache_lock("organism-x"):
        other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        time.sleep(1.5)
        released = time.time()
    acquired = float(other.communicate(timeout=60)[0])
    assert acquired >= released  # it could not enter while this process held the entry


def test_checkpoints_and_their_source_records_are_found_by_name_or_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHLIB_CACHE", str(tmp_path / "cache"))
    tuned = tmp_path / "cache" / "finetuned" / "my-lora"
    tuned.mkdir(parents=True)
    (tuned / "config.json").write_text("{}")
    (tuned / "mechlib_source.json").write_text('{"base": "arith-organism"}')
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "mechlib_source.json").write_text("not json")
    assert is_checkpoint("my-lora") and is_checkpoint(folder) and not is_checkpoint("missing")
    assert source_record("my-lora") == {"base": "arith-organism"}
    assert source_record(folder) is None and source_record("missing") is None  # unreadable or absent: None
