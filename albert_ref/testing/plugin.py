"""pytest plugin (entry point `pytest11`), active wherever albert-ref is installed.

Fixtures:
    albert_model_path  the model file: --albert-model, else the `albert_model` ini
                       setting (relative to the rootdir), else the bundled demo model
    albert_oracle      an albert_ref.testing.Oracle over it, loaded once per session

    def test_port(albert_oracle):
        ids = np.array([[2, 10, 11, 3]])
        assert_close(my_port(ids), albert_oracle(ids, precision="float64"))

The oracle is only loaded by a test that asks for it; the plugin adds nothing else.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from albert_ref.testing.oracle import CONTRACT_BACKENDS


def pytest_addoption(parser):
    group = parser.getgroup("albert-ref", "albert-ref test oracle")
    group.addoption("--albert-model", metavar="MODEL.h5", default=None,
                    help="model file for the albert_oracle fixture (default: the albert_model ini "
                         "setting, else albert-ref's bundled demo model)")
    group.addoption("--albert-backend", choices=CONTRACT_BACKENDS, default="cpu",
                    help="contract kernels giving albert_oracle's float32 outputs (equal bits; default cpu)")
    parser.addini("albert_model", "model file for the albert_oracle fixture, relative to the rootdir")


def _model_path(config) -> Path:
    option = config.getoption("albert_model")
    if option:
        return Path(option)
    ini = config.getini("albert_model")
    if ini:
        return Path(config.rootpath, ini)
    from albert_ref.weights import DEMO_MODEL
    return DEMO_MODEL


def pytest_report_header(config):
    return f"albert-ref oracle: {_model_path(config)}"


@pytest.fixture(scope="session")
def albert_model_path(pytestconfig) -> Path:
    return _model_path(pytestconfig)


@pytest.fixture(scope="session")
def albert_oracle(albert_model_path, pytestconfig):
    from albert_ref.testing.oracle import Oracle
    return Oracle(albert_model_path, backend=pytestconfig.getoption("albert_backend"))
