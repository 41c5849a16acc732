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


def test_a_job_selected_by_score_keeps_the_scores_and_the_kept_step_s_previews(train_config):
    job = TrainingJob()
    config = train_config(max_steps=4, validation_split=0.2, validate_every=2, learning_rate=5e-2, select_by="score")
    job.start(config)
    job.wait(300)
    state = job.snapshot()
    assert state.status == "done", state.message
    assert [step for step, _, _ in state.scores] == [2, 4]
    kept = int(state.message.split("kept step ")[1].split()[0])
    assert kept in (2, 4) and "preview score" in state.message
    assert [p.name for p in state.kept_previews] == [f"step-{kept:06d}-0.png", f"step-{kept:06d}-1.png"]


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


def test_a_folder_anywhere_is_shown_through_thumbnails_in_the_workspace(image_folder, tmp_path):
    import os

    from PIL import Image

    from stylelora.data.workspace import THUMBNAIL_SIDE, thumbnails

    folder = tmp_path / "elsewhere"
    folder.mkdir()
    Image.new("RGB", (600, 300), "red").save(folder / "wide.png")
    (folder / "broken.png").write_bytes(b"not a png")
    workspace = tmp_path / "ws"
    made = thumbnails(folder, ["wide.png", "broken.png"], workspace)
    assert len(made) == 1 and made[0].is_relative_to(workspace / "thumbnails")  # the broken one gets none
    assert Image.open(made[0]).size == (THUMBNAIL_SIDE, THUMBNAIL_SIDE // 2)
    # A newer image is copied again; an unchanged one is not rewritten
    before = made[0].stat().st_mtime_ns
    assert thumbnails(folder, ["wide.png"], workspace)[0].stat().st_mtime_ns == before
    Image.new("RGB", (100, 100), "blue").save(folder / "wide.png")
    os.utime(folder / "wide.png", ns=(before + 10**9, before + 10**9))
    assert Image.open(thumbnails(folder, ["wide.png"], workspace)[0]).size == (100, 100)


def test_each_upload_gets_a_new_folder(tmp_path):
    from stylelora.data.workspace import dataset_folder

    first, second = dataset_folder(tmp_path, "my style"), dataset_folder(tmp_path, "my style")
    assert (first.name, second.name) == ("my style", "my style-2") and first.parent == tmp_path / "datasets"
    assert dataset_folder(tmp_path, "../../escape").parent == tmp_path / "datasets"


def test_the_library_entry_says_how_it_was_trained_and_its_stamp_follows_changes(two_adapters, tmp_path):
    import shutil

    from stylelora.adapters.library import library_stamp

    library = tmp_path / "lib"
    library.mkdir()
    assert library_stamp(library) == ()
    shutil.copy(two_adapters[0], library / "alpha.safetensors")
    stamp = library_stamp(library)
    entry = list_adapters(library)[0]
    assert (entry.steps, entry.kept_step) == ("3", "3")
    assert entry.settings["rank"] == 2 and entry.settings["seed"] == 1 and entry.settings["max_steps"] == 3
    assert library_stamp(library) == stamp
    shutil.copy(two_adapters[1], library / "beta.safetensors")
    assert library_stamp(library) != stamp


def test_page_messages_name_fields_by_their_labels():
    from stylelora.ui.fields import for_page

    assert for_page("--prompt = '': give a prompt") == "'Prompt' = '': give a prompt"
    assert for_page("--max-steps = 0: fix") == "'Steps' = 0: fix"
    assert for_page("out of disk: run the same command with --resume to continue") == \
        "out of disk: tick Resume and press Start again to continue"
    assert for_page("--lora: give adapter A") == "'--lora': give adapter A"  # no field on the page: the flag stays


def test_the_train_form_shows_a_config_that_reads_back_the_same(tmp_path):
    from stylelora.options import page_values
    from stylelora.train.config import TrainConfig
    from stylelora.ui.fields import page_value

    config = TrainConfig(data=tmp_path, rank=7, max_steps=123, learning_rate=3e-4, method="loha", targets="all",
                         validation_split=0.2, keep="best", sample_every=0, resolution=None)
    settings = config.to_json_dict()
    for name in ("rank", "max_steps", "learning_rate", "method", "targets", "validation_split", "keep", "resolution"):
        shown = page_value(TrainConfig, name, settings[name])
        assert page_values(TrainConfig, {name: shown}).get(name, getattr(TrainConfig(data=tmp_path), name)) == \
            getattr(config, name), name


def test_the_best_trial_is_the_lowest_loss_or_the_highest_style():
    from stylelora.tune.results import TrialReport, best_of

    reports = [TrialReport(0, "COMPLETE", 0.3, {}), TrialReport(1, "PRUNED", 0.1, {}),
               TrialReport(2, "COMPLETE", 0.2, {}), TrialReport(3, "FAIL", None, {})]
    assert best_of(reports, "loss").number == 2 and best_of(reports, "judge").number == 0
    assert best_of(reports[3:], "loss") is None
