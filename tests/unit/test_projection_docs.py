"""docs/LEDGER_PROJECTION.md documents every column and view, and its SQL examples run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from trustbus.bus import Identity, Keyring
from trustbus.ledger import connect
from trustbus.ledger._projector import Projector
from trustbus.ledger._rows import Rows
from trustbus.ledger._schema import TABLES, VIEWS
from trustbus.ledger._segments import SegmentStore

DOC = (Path(__file__).resolve().parents[2] / "docs" / "LEDGER_PROJECTION.md").read_text()


def section(table: str) -> str:
    start = DOC.index(f"### `{table}`")
    return re.split(r"\n##+ ", DOC[start + 1 :])[0]


@pytest.mark.parametrize("table", list(TABLES))
def test_every_column_is_documented_with_its_type(table: str) -> None:
    documented = re.findall(r"^\| `(\w+)` \| ([^|]+) \|", section(table), flags=re.MULTILINE)
    assert [(name, kind.strip()) for name, kind in documented] == list(TABLES[table].items())


def test_every_view_is_documented_with_its_columns(tmp_path: Path) -> None:
    keyring = Keyring(tenant="acme", admin_key_id=Identity.generate().key_id)
    SegmentStore.open(tmp_path, "acme").commit(Rows(), Projector("acme", keyring).position, since_checkpoint=0, keys=[])
    con = connect(tmp_path)
    for view in VIEWS:
        (row,) = re.findall(rf"^\| `{view}` \| ([^|]+) \|", DOC, flags=re.MULTILINE)
        assert re.findall(r"`(\w+)`", row) == con.sql(f"SELECT * FROM {view}").columns, view
    for block in re.findall(r"```sql\n(.*?)```", DOC, flags=re.DOTALL):
        for statement in filter(str.strip, block.split(";")):
            sql = "\n".join(line for line in statement.splitlines() if not line.startswith("--"))
            con.sql(sql).fetchall()
