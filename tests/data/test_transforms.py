"""Preprocessing, augmentation and the way back to native space."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import RandScaleIntensity

from monai_protoshare.data.brats import load_brats_datalist
from monai_protoshare.data.transforms import (
    RandChannelwised,
    augmentation_transforms,
    eval_transforms,
    inference_transforms,
    preprocessing_transforms,
    to_native_space,
    train_transforms,
)

SMALL = {"spatial_size": (24, 24, 16), "pixdim": 8.0}  # tiny stand-in for a preset
CPU_SMALL = {"spatial_size": (64, 64, 48), "pixdim": 3.0}  # DESIGN §4


@pytest.fixture(scope="module")
def datalist(tiny_cohort):
    return load_brats_datalist(tiny_cohort)


def _check_preprocessed(item, spatial_size):
    image, seg, mask = item["image"], item["seg"], item["mask"]
    assert image.dtype == torch.float32 and tuple(image.shape) == (4, *spatial_size)
    assert tuple(mask.shape) == tuple(seg.shape) == (1, *spatial_size) and mask.dtype == torch.float32
    assert set(torch.unique(seg).tolist()) <= {0, 1, 2, 4}
    torch.testing.assert_close(mask, (seg > 0).float())
    assert item["label"] in (0, 1)
    for channel in image:
        brain = channel != 0
        assert 0.05 < brain.float().mean() < 0.95  # brain voxels and zero background both present
        assert abs(float(channel[brain].mean())) < 1e-4 and abs(float(channel[brain].std(correction=0)) - 1) < 1e-3


def test_preprocessing_gives_zscored_brain_label_and_tumour_mask(datalist):
    transform = eval_transforms(**SMALL)
    for item in datalist[:3]:
        out = transform(item)
        _check_preprocessed(out, SMALL["spatial_size"])
        assert out["subject_id"] == item["subject_id"]


def test_cpu_small_preset_shape_and_brain_centred_crop(datalist):
    out = eval_transforms(**CPU_SMALL)(datalist[0])
    _check_preprocessed(out, CPU_SMALL["spatial_size"])
    assert out["mask"].sum() > 0
    nonzero = torch.nonzero(out["image"].abs().sum(0))
    centre = (nonzero.min(0).values + nonzero.max(0).values).float() / 2
    torch.testing.assert_close(centre, (torch.tensor(CPU_SMALL["spatial_size"]) - 1).float() / 2, atol=1.0, rtol=0)


def test_inference_and_training_need_no_segmentation(datalist):
    item = {"image": datalist[1]["image"]}
    out = inference_transforms(**SMALL)(item)
    assert tuple(out["image"].shape) == (4, *SMALL["spatial_size"]) and set(out) == {"image"}
    train = train_transforms(**SMALL, augment=True)
    train.set_random_state(0)
    out = train(dict(datalist[1]))
    assert tuple(out["image"].shape) == (4, *SMALL["spatial_size"]) and out["label"] == datalist[1]["label"]
    assert isinstance(out["seg"], str)  # not loaded: masks are never a training input


def test_every_augmentation_keeps_shapes_and_labels_and_changes_values(datalist):
    item = eval_transforms(**SMALL)(datalist[0])
    always = augmentation_transforms(
        **{f"prob_{name}": 1.0 for name in ("rotation", "scale", "noise", "blur", "brightness", "contrast")},
        **{f"prob_{name}": 1.0 for name in ("low_res", "gamma", "flip", "blur_per_channel", "low_res_per_channel")},
    )
    always.set_random_state(1)
    out = always(dict(item))
    for key in ("image", "seg", "mask"):
        assert out[key].shape == item[key].shape
    assert not torch.allclose(out["image"], item["image"])
    assert set(torch.unique(out["seg"]).tolist()) <= {0, 1, 2, 4}
    torch.testing.assert_close(out["mask"], (out["seg"] > 0).float())  # moved together, nearest
    never = augmentation_transforms(
        **{f"prob_{name}": 0.0 for name in ("rotation", "scale", "noise", "blur", "brightness", "contrast")},
        **{f"prob_{name}": 0.0 for name in ("low_res", "gamma", "flip")},
    )
    torch.testing.assert_close(never(dict(item))["image"], item["image"])


def test_default_augmentation_is_seeded_and_acts_on_either_grade(datalist):
    items = [eval_transforms(**SMALL)(d) for d in datalist[:2]]
    assert {i["label"] for i in items} == {0, 1}
    runs = []
    for item in items:
        augment = augmentation_transforms()
        augment.set_random_state(7)
        runs.append([augment(dict(item))["image"] for _ in range(3)])
        assert any(not torch.equal(a, item["image"]) for a in runs[-1])  # LGG and HGG are both augmented
    augment = augmentation_transforms()
    augment.set_random_state(7)
    assert all(torch.equal(augment(dict(items[0]))["image"], a) for a in runs[0])  # same seed, same draws


def test_channelwise_wrapper_draws_each_channel_independently():
    image = torch.ones(4, 6, 6, 4)
    wrapper = RandChannelwised("image", RandScaleIntensity(factors=(-0.5, 0.5), prob=1.0), prob=1.0)
    scales = wrapper.set_random_state(0)({"image": image})["image"][:, 0, 0, 0]
    assert len(set(scales.tolist())) == 4
    skip = RandChannelwised("image", RandScaleIntensity(factors=0.5, prob=1.0), prob=1.0, prob_per_channel=0.0)
    assert torch.equal(skip({"image": image})["image"], image)
    with pytest.raises(ValueError, match="prob_per_channel"):
        RandChannelwised("image", RandScaleIntensity(factors=0.5), prob_per_channel=2.0)


def test_map_returns_to_the_native_shape_and_affine(datalist):
    transform = eval_transforms((48, 48, 32), 5.0)
    out = transform(datalist[2])
    native = to_native_space(out["mask"], out["image"], transform, mode="nearest")
    seg = nib.load(datalist[2]["seg"])
    assert tuple(native.shape) == (1, *seg.shape)
    np.testing.assert_allclose(native.affine.numpy(), seg.affine, atol=1e-5)
    truth, back = np.asarray(seg.dataobj) > 0, native[0].numpy() > 0.5
    assert 2 * (truth & back).sum() / (truth.sum() + back.sum()) > 0.85  # 6 mm -> 5 mm -> 6 mm
    linear = to_native_space(out["image"], out["image"], transform)
    assert tuple(linear.shape) == (4, *seg.shape)


def _write_oblique_case(folder, blob_voxel):
    """Four sequences + seg on an oblique, anisotropic grid: an ellipsoidal 'brain' and a bright blob."""
    shape = (40, 36, 22)
    rotation = _rotation(np.deg2rad(20.0), np.deg2rad(-12.0), np.deg2rad(8.0))
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1.3, 1.0, 2.6])
    affine[:3, 3] = [-20.0, 35.0, -12.0]
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    centre = (np.array(shape) - 1) / 2
    brain = (((grid - centre) / (np.array(shape) * 0.42)) ** 2).sum(-1) < 1
    blob = ((grid - blob_voxel) ** 2 * np.array([1.3, 1.0, 2.6]) ** 2).sum(-1) < 3.0**2
    paths = []
    for k, name in enumerate(("t1", "t1ce", "t2", "flair")):
        data = (brain * (100.0 + 10 * k) + blob * 200.0).astype(np.float32)
        paths.append(str(folder / f"{name}.nii.gz"))
        nib.save(nib.Nifti1Image(data, affine), paths[-1])
    nib.save(nib.Nifti1Image((blob & brain).astype(np.uint8), affine), folder / "seg.nii.gz")
    return {"image": paths, "seg": str(folder / "seg.nii.gz"), "label": 1}, affine, shape


def _rotation(ax, ay, az):
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    return (
        np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    )


def test_a_blob_in_network_space_lands_on_its_native_voxel_of_an_oblique_anisotropic_input(tmp_path):
    blob_voxel = np.array([26.0, 14.0, 13.0])
    item, affine, shape = _write_oblique_case(tmp_path, blob_voxel)
    transform = preprocessing_transforms((32, 32, 24), 2.0)
    out = transform(item)
    # Put a blob on the network grid at the world position of the native blob, then send it back.
    world = affine @ [*blob_voxel, 1.0]
    net_voxel = np.linalg.solve(out["image"].affine.numpy(), world)[:3]
    grid = torch.stack(torch.meshgrid(*[torch.arange(n) for n in (32, 32, 24)], indexing="ij"), -1).double()
    network_map = torch.exp(-((grid - torch.from_numpy(net_voxel)) ** 2).sum(-1) / 2.0)[None].float()
    native = to_native_space(network_map, out["image"], transform)
    assert tuple(native.shape) == (1, *shape)
    np.testing.assert_allclose(native.affine.numpy(), affine, atol=1e-5)
    peak = np.unravel_index(int(native[0].argmax()), shape)
    assert np.linalg.norm((np.array(peak) - blob_voxel) * [1.3, 1.0, 2.6]) < 2.0  # within one 2 mm network voxel
    # The tumour mask goes back onto the blob too.
    mask_back = to_native_space(out["mask"], out["image"], transform, mode="nearest")[0].numpy() > 0.5
    assert mask_back[tuple(blob_voxel.astype(int))]


def test_to_native_space_rejects_a_map_of_the_wrong_grid_or_mode(datalist):
    transform = eval_transforms(**SMALL)
    out = transform(datalist[0])
    with pytest.raises(ValueError, match="preprocessed grid"):
        to_native_space(torch.zeros(1, 8, 8, 8), out["image"], transform)
    with pytest.raises(ValueError, match="nearest"):
        to_native_space(out["mask"], out["image"], transform, mode="cubic")
    with pytest.raises(ValueError, match="applied_operations"):
        to_native_space(out["mask"], out["image"].as_tensor(), transform)


def test_loading_from_several_threads_never_mixes_cases(datalist):
    # CacheDataset loads with a thread pool through one transform object: MONAI's NibabelReader keeps the names of
    # its last read on itself, so a shared reader paired one thread's images with another's seg (issue 23)
    from concurrent.futures import ThreadPoolExecutor

    from monai_protoshare.data.transforms import LoadSequencesd

    load = LoadSequencesd(["image", "seg"])
    items = list(datalist) * 8

    def shape(item):
        return tuple(load(dict(item))["image"].shape)

    for _ in range(3):
        with ThreadPoolExecutor(4) as pool:
            assert {s[0] for s in pool.map(shape, items)} == {4}
