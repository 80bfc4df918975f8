"""The shared check behind every config's from_dict."""

from dataclasses import dataclass

import pytest

from cryonb.errors import CryoNBError, reject_unknown_keys


@dataclass
class _Config:
    steps: int = 1
    lr: float = 0.1


def test_reject_unknown_keys_names_the_config_the_typo_and_the_known_keys() -> None:
    reject_unknown_keys({"steps": 3}, _Config, "toy")  # known keys pass
    reject_unknown_keys({}, _Config, "toy")
    with pytest.raises(CryoNBError, match=r"unknown toy parameter\(s\) \['step', 'x'\]; expected some of \['lr', 'steps'\]"):
        reject_unknown_keys({"step": 3, "x": 1, "lr": 0.2}, _Config, "toy")
