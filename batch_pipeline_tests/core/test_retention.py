"""What every sweep shares: one item that cannot be removed is logged and the others still go; a folder
goes in one rename, and a deletion a crash interrupted is finished later."""

import logging

from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.retention import cutoff, empty_trash, remove_each, remove_folder

LOG = logging.getLogger("test")


def test_one_broken_item_is_logged_and_the_others_go(caplog):
    gone = []

    def remove(item: str) -> None:
        if item == "b":
            raise PermissionError("read-only")
        gone.append(item)

    with caplog.at_level(logging.INFO):
        assert remove_each(["a", "b", "c"], remove, LOG, "thing") == ["a", "c"]
    assert gone == ["a", "c"]
    assert "retention: could not remove thing b: PermissionError: read-only" in caplog.text
    assert "retention: removed thing a" in caplog.text and "retention: removed thing c" in caplog.text


def test_zero_days_means_kept():
    assert cutoff(0, 1_000_000) is None
    assert cutoff(1, 1_000_000) == 1_000_000 - 86400


def test_a_folder_goes_through_the_trash_and_an_interrupted_deletion_is_finished(tmp_path):
    layout = DataLayout(tmp_path)
    folder = tmp_path / "datasets" / "a"
    (folder / "responses").mkdir(parents=True)
    (folder / "input.jsonl").write_text("{}\n")
    remove_folder(layout, folder)
    assert not folder.exists() and list(layout.trash.iterdir()) == []

    (layout.trash / "b-1" / "responses").mkdir(parents=True)  # a crash left it half deleted
    assert [path.name for path in empty_trash(layout, LOG)] == ["b-1"]
    assert list(layout.trash.iterdir()) == []
