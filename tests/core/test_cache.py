"""The cache's rules: a lock per entry across processes, and a manifest that finds a damaged entry
so it is made again."""
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


DAMAGE = {
    "a flipped bit": lambda f: (f / "model.safetensors").write_bytes(b"\x01" + (f / "model.safetensors").read_bytes()[1:]),
    "truncated": lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:-1]),
    "a missing file": lambda f: (f / "config.json").unlink(),
    "a bad manifest": lambda f: (f / "mechlib_files.json").write_text("{"),
}


def sealed_entry(folder):
    from mechlib.core.cache import seal

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 16)
    (folder / "config.json").write_text("{}")
    seal(folder)
    return folder


def test_a_sealed_entry_reports_each_kind_of_damage(tmp_path):
    from mechlib.core.cache import damage

    for what, hurt in DAMAGE.items():
        entry = sealed_entry(tmp_path / what.replace(" ", "-"))
        assert damage(entry, full=True) is None
        hurt(entry)
        assert damage(entry, full=True) is not None, what
    assert damage(tmp_path / "never-sealed") is None  # nothing recorded, nothing to check


def test_a_damaged_organism_or_fine_tune_is_made_again(tmp_path, monkeypatch, capfd):
    """The organism is trained again (deterministic) and a fine-tune counts as missing, so its
    chapter trains it again: both say so in one line. Training is faked: the rule is tested."""
    import dataclasses
    import json

    from mechlib.core import lora, organism
    from mechlib.core.cache import SOURCE_FILE, finetuned_dir

    monkeypatch.setenv("MECHLIB_CACHE", str(tmp_path / "cache"))
    trained = []
    monkeypatch.setattr(organism, "train_organism", lambda recipe, path, progress=True: trained.append(sealed_entry(path)))
    path = organism.ensure_organism(progress=False)
    assert organism.ensure_organism(progress=False) == path and len(trained) == 1
    (path.parent / f".{path.name}.partial-killed").mkdir()  # a killed trainer's folder
    DAMAGE["a flipped bit"](path)
    organism.ensure_organism(progress=False)
    assert len(trained) == 2 and "organism" in capfd.readouterr().err
    assert not (path.parent / f".{path.name}.partial-killed").exists()

    recipe = lora.FinetuneRecipe()
    tuned = sealed_entry(finetuned_dir("ft"))
    (tuned / SOURCE_FILE).write_text(json.dumps({"recipe_key": recipe.key(), "recipe": dataclasses.asdict(recipe)}))
    from mechlib.core.cache import seal

    seal(tuned)
    assert lora.is_current("ft", recipe)
    DAMAGE["truncated"](tuned)
    assert not lora.is_current("ft", recipe) and "fine-tune 'ft' is damaged" in capfd.readouterr().err
