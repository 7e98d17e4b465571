"""Small ablation specs for the sweep's unit tests."""

import yaml

from tests.conftest import TINY


def spec(**kw):
    """A 2-cell x 2-seed grid on the tiny test config; a key given as None is dropped (grid=None: no grid)."""
    d = {"name": "t", "base": dict(TINY), "grid": {"kl.coef": [0.0, 0.2]}, "seeds": [0, 1]}
    d.update(kw)
    return {k: v for k, v in d.items() if v is not None or k == "name"}


def write_spec(path, d):
    path.write_text(yaml.safe_dump(d))
    return path
