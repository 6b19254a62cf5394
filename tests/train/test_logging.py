import csv
import json

from ds3kit.train.logging import RunLogger


def test_csv_header_widens_when_a_network_starts_logging(tmp_path):
    logger = RunLogger(tmp_path)
    logger.log(1, "train", {"teacher/pixel": 2.0})
    logger.log(2, "train", {"teacher/pixel": 1.5, "student/image": 0.7})  # the student joins after warm-up
    logger.close()
    with open(tmp_path / "metrics.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["step"] for row in rows] == ["1", "2"]
    assert rows[0]["student/image"] == "" and rows[1]["student/image"] == "0.7"
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[1]["student/image"] == 0.7 and records[0]["split"] == "train"


def test_disabled_logger_writes_nothing(tmp_path):
    RunLogger(tmp_path, enabled=False).log(1, "train", {"x": 1.0})
    assert list(tmp_path.iterdir()) == []
