"""Where train.init_from points: a run's folder (one file per fold) or one weights file."""

import pytest

from cellseg.common.errors import ConfigError
from cellseg.model.init_source import init_weights_file


def test_a_run_folder_gives_each_fold_its_own_weights_and_a_file_every_fold(tmp_path):
    fold0 = tmp_path / "run" / "results" / "train" / "fold0" / "model_best.pt"
    fold0.parent.mkdir(parents=True)
    fold0.write_bytes(b"w")
    assert init_weights_file(tmp_path / "run", 0) == fold0
    assert init_weights_file(fold0, 3) == fold0
    with pytest.raises(ConfigError, match=r"train.init_from: .*fold1/model_best.pt not found: that run has no .* fold 1"):
        init_weights_file(tmp_path / "run", 1)
    with pytest.raises(ConfigError, match=r"train.init_from: .*missing not found"):
        init_weights_file(tmp_path / "missing", 0)
