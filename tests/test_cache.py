"""Preprocessing cache on real NIfTI files: crop, normalisation, memory maps, resume, clear errors."""

import nibabel as nib
import numpy as np
import pytest

from kit.data.cache import build_cache, open_cache


@pytest.fixture()
def entries(tmp_path):
    rng = np.random.default_rng(0)
    out = []
    for i in range(3):
        files = []
        for m, scale in (("t1", 600.0), ("flair", 300.0)):
            a = np.zeros((30, 32, 28), np.float32)
            a[5:25, 6:20, 4:22] = rng.random((20, 14, 18)) * scale + 50
            p = tmp_path / f"s{i}_{m}.nii.gz"
            nib.save(nib.Nifti1Image(a, np.diag([2.0, 2.0, 2.0, 1.0])), p)
            files.append(str(p))
        lab = np.zeros((30, 32, 28), np.uint8)
        lab[10:13, 10:12, 10:12] = 4
        p = tmp_path / f"s{i}_seg.nii.gz"
        nib.save(nib.Nifti1Image(lab, np.diag([2.0, 2.0, 2.0, 1.0])), p)
        out.append({"subject": f"s{i}", "image": files, "label": str(p), "age": 30 + i})
    return out


def test_cache_crops_normalises_and_memory_maps(tmp_path, entries):
    cache = build_cache(entries, ["t1", "flair"], tmp_path / "cache", margin=2)
    assert len(cache) == 3 and cache.modalities == ["t1", "flair"]
    image = cache.images()[0]
    assert isinstance(image, np.memmap) and image.dtype == np.float32
    # brain box 20x14x18 plus a 2-voxel margin on each side
    assert image.shape == (2, 24, 18, 22)
    assert cache.entries[0]["crop_start"] == [3, 4, 2] and cache.entries[0]["original_shape"] == [30, 32, 28]
    for channel in image:  # z-score over brain voxels, background stays 0
        brain = channel[channel != 0]
        assert abs(brain.mean()) < 1e-4 and abs(brain.std() - 1) < 1e-3
        assert channel[0, 0, 0] == 0
    label = cache.labels()[0]
    assert label.shape == (1, 24, 18, 22) and label.dtype == np.uint8 and (label == 4).sum() == 12
    # cached voxels map back to the original grid through crop_start
    start = cache.entries[0]["crop_start"]
    original = np.asanyarray(nib.load(entries[0]["label"]).dataobj)
    assert np.array_equal(np.argwhere(label[0] == 4) + start, np.argwhere(original == 4))
    assert cache.entries[2]["age"] == 32  # phenotype fields travel with the entry


def test_cache_resumes_and_rebuilds_on_new_settings(tmp_path, entries):
    build_cache(entries[:2], ["t1", "flair"], tmp_path / "cache")
    first = (tmp_path / "cache" / "s0.image.npy").stat().st_mtime_ns
    cache = build_cache(entries, ["t1", "flair"], tmp_path / "cache")
    assert (tmp_path / "cache" / "s0.image.npy").stat().st_mtime_ns == first  # not recomputed
    assert len(open_cache(tmp_path / "cache")) == 3 and len(cache) == 3
    build_cache(entries, ["t1", "flair"], tmp_path / "cache", margin=0)
    assert open_cache(tmp_path / "cache").images()[0].shape == (2, 20, 14, 18)


def test_cache_errors_name_the_file(tmp_path, entries):
    bad = dict(entries[0], image=[entries[0]["image"][0]])
    with pytest.raises(ValueError, match="s0_t1.nii.gz.*1 images, expected 2"):
        build_cache([bad], ["t1", "flair"], tmp_path / "cache")
    broken = tmp_path / "broken_t1.nii.gz"
    broken.write_bytes(b"not a nifti")
    with pytest.raises(ValueError, match="broken_t1.nii.gz"):
        build_cache([dict(entries[0], image=[str(broken), entries[0]["image"][1]])], ["t1", "flair"], tmp_path / "c2")
    with pytest.raises(FileNotFoundError, match="no cache index"):
        open_cache(tmp_path / "nowhere")
