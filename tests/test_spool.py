import numpy as np
import pytest

from cellseg.common.spool import Spool
from cellseg.scoring.coco_format import Binarised


def test_a_spool_reads_its_records_back_in_order_on_every_pass(tmp_path):
    records = [Binarised([{"size": [4, 4], "counts": "0"}] * i, np.arange(i), np.linspace(0, 1, i)) for i in range(5)]
    spool = Spool(iter(records), tmp_path)  # a generator, read once
    assert len(spool) == 5 and spool.path.parent == tmp_path
    for _ in range(2):
        back = list(spool)
        assert [b.rles for b in back] == [r.rles for r in records]
        assert all(np.array_equal(b.scores, r.scores) for b, r in zip(back, records))
    assert spool[3].rles == records[3].rles and spool[-1].rles == records[-1].rles
    passes = zip(spool, spool)  # two passes at once, each with its own file handle
    assert all(a.rles == b.rles for a, b in passes)
    picked = spool.subset([4, 1])
    assert [len(b.rles) for b in picked] == [4, 1] and picked.path != spool.path
    spool.delete()
    assert not spool.path.exists() and len(list(picked)) == 2
    with pytest.raises(FileNotFoundError):
        list(spool)
