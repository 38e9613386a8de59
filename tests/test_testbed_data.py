"""Fashion-MNIST loader: located through dpkg or SPECDEC_FASHION_MNIST_DIR, padded 28 -> 32, clear error if absent."""

import pytest
import torch

from specdec.testbed import data

requires_data = pytest.mark.skipif(
    not data.dataset_available(),
    reason=f"Fashion-MNIST missing: install the Debian package {data.PACKAGE} ({data.INSTALL_HINT})",
)


@requires_data
def test_test_split_shapes_padding_and_labels():
    images, labels = data.load_fashion_mnist("test")
    assert images.shape == (10000, 1, 32, 32) and images.dtype == torch.float32
    assert labels.shape == (10000,) and torch.equal(labels.bincount(), torch.full((10,), 1000))
    assert images.min() == -1.0 and images.max() == 1.0
    border = torch.cat([images[..., :2, :].flatten(1), images[..., -2:, :].flatten(1),
                        images[..., :2].flatten(1), images[..., -2:].flatten(1)], 1)
    assert (border == -1.0).all()  # padded with the background value


@requires_data
def test_env_override(tmp_path, monkeypatch):
    for name, path in data.locate_files().items():
        (tmp_path / name).symlink_to(path)
    data.locate_files.cache_clear()
    monkeypatch.setenv(data.ENV_DIR, str(tmp_path))
    try:
        assert set(data.locate_files().values()) == {tmp_path / n for n in data.locate_files()}
    finally:
        data.locate_files.cache_clear()


def test_missing_files_error_names_package(tmp_path, monkeypatch):
    data.locate_files.cache_clear()
    monkeypatch.setenv(data.ENV_DIR, str(tmp_path))
    try:
        with pytest.raises(data.DatasetMissingError, match=data.PACKAGE) as err:
            data.locate_files()
        assert "apt-get install" in str(err.value)
        assert not data.dataset_available()
    finally:
        data.locate_files.cache_clear()
