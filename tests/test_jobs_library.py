"""Background training jobs and the adapter library, as the web UI uses them."""

import time

import pytest

from stylelora.adapters.library import delete_adapter, import_adapter, list_adapters, rename_adapter
from stylelora.data.workspace import caption_rows, save_captions, save_uploads
from stylelora.errors import AdapterFileError, ConfigError, StyleloraError
from stylelora.files import safe_file_name
from stylelora.train.jobs import TrainingJob


def test_job_runs_in_the_background_refuses_a_second_start_and_stops_with_a_checkpoint(train_config):
    job = TrainingJob()
    config = train_config(max_steps=400, save_every=1)
    job.start(config)
    with pytest.raises(StyleloraError, match="already running"):
        job.start(config)
    deadline = time.time() + 120
    while job.snapshot().step < 2 and time.time() < deadline:
        time.sleep(0.05)
    job.stop()
    job.wait(120)
    state = job.snapshot()
    assert state.status == "stopped" and "--resume" in state.message
    assert state.losses and state.losses[0][0] == 1
    assert any((config.out / "checkpoints").iterdir())


def test_job_reports_errors_as_messages(train_config, tmp_path):
    job = TrainingJob()
    job.start(train_config(data=tmp_path / "missing"))
    job.wait(60)
    state = job.snapshot()
    assert state.status == "failed" and "no such folder" in state.message


def test_file_names_cannot_escape(tmp_path):
    assert safe_file_name("../../etc/passwd") == "passwd"
    assert safe_file_name("/abs/evil name?.png") == "evil name_.png"
    assert safe_file_name("..") == "file"
    source = tmp_path / "upload.bin"
    source.write_bytes(b"\x89PNG")
    dest = tmp_path / "dest"
    dest.mkdir()
    saved, refused = save_uploads([(source, "../../x.png"), (source, "y.exe")], dest)
    assert saved == [dest / "x.png"] and refused == ["y.exe: not an image (png, jpg, jpeg, webp, bmp) or caption (.txt, .caption)"]


def test_captions_are_saved_as_sidecars_inside_the_folder_only(image_folder, tmp_path):
    import shutil

    folder = tmp_path / "set"
    shutil.copytree(image_folder, folder)
    rows, skipped = caption_rows(folder)
    assert len(rows) == 6 and not skipped
    rows[0][1] = "new caption"
    assert save_captions(folder, rows) == 6
    assert (folder / rows[0][0]).with_suffix(".txt").read_text() == "new caption\n"
    with pytest.raises(ConfigError, match="not an image"):
        save_captions(folder, [["../outside.png", "x"]])


def test_library_import_rename_delete(two_adapters, tmp_path):
    library = tmp_path / "lib"
    imported = import_adapter(two_adapters[0], library)
    assert [e.name for e in list_adapters(library)] == ["alpha"]
    entry = list_adapters(library)[0]
    assert entry.architecture == "stylelora mini" and entry.rank == 2 and entry.images == "6" and entry.method == "LoRA"
    (tmp_path / "evil.ckpt").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(AdapterFileError, match="only .safetensors"):
        import_adapter(tmp_path / "evil.ckpt", library)
    (tmp_path / "junk.safetensors").write_bytes(b"garbage")
    with pytest.raises(AdapterFileError, match="not a valid .safetensors"):
        import_adapter(tmp_path / "junk.safetensors", library)
    renamed = rename_adapter(imported, "../../renamed", library)
    assert renamed == library / "renamed.safetensors" and not imported.exists()
    with pytest.raises(ConfigError, match="not in the adapters folder"):
        delete_adapter(two_adapters[1], library)
    delete_adapter(renamed, library)
    assert list_adapters(library) == []


def test_stop_with_nothing_running_says_so_and_a_study_of_a_missing_folder_never_starts(tmp_path):
    from stylelora.errors import DatasetError
    from stylelora.train.jobs import TrainingJob
    from stylelora.tune.jobs import TuneJob
    from stylelora.tune.space import TuneConfig

    assert TrainingJob().stop() is False
    job = TuneJob()
    assert job.stop() is False
    with pytest.raises(DatasetError, match="nope: no such folder"):
        job.start(TuneConfig(data=tmp_path / "nope", out=tmp_path / "study"))
    assert not job.running and job.snapshot().status == "idle"
    assert not (tmp_path / "study").exists()
