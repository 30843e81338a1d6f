import json
import os
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pydicom
import torch
import yaml

from data_prep.evidence_seg import case_seg_writer
from monai_protoshare.data.synthetic import generate_cohort
from monai_protoshare.explain import evidence_writer
from monai_protoshare.explain.dicom_seg import read_series, series_label_volume
from monai_protoshare.workflows.export_evidence import (
    SUMMARY_NAME,
    cases_one_per_class_first,
    export_evidence,
    export_for_workflow,
    main,
)
from tests.explain.evidence_cases import (
    NETWORK_GRID,
    PIXDIM,
    image_transform,
    tiny_network,
    write_case,
    write_dicom_case,
)
from tests.toy_data import TINY_NET


def _mtime(path):
    return os.stat(path).st_mtime_ns


def test_failing_cases_are_reported_never_stop_the_batch_and_reruns_skip_finished_cases(tmp_path, monkeypatch):
    data = tmp_path / "data"
    datalist = [write_case(data, f"case00{i}", label=int(i > 1), seed=i) for i in range(1, 4)]
    good_t1ce = open(datalist[1]["image"][1], "rb").read()
    open(datalist[1]["image"][1], "wb").write(b"not a nifti file")  # case002 cannot be read
    real_write = evidence_writer.write_nifti

    def crash_on_case003(path, data, reference):  # case003 dies half-way through its files
        if "case003" in str(path) and "prototype" in str(path):
            raise OSError("killed while writing")
        return real_write(path, data, reference)

    monkeypatch.setattr(evidence_writer, "write_nifti", crash_on_case003)
    out = tmp_path / "evidence"
    net, transform = tiny_network(), image_transform()
    summary = export_evidence(net, datalist, transform, out, top_k=2, reference=datalist, figures=False, progress=False)

    assert summary.written == ["case001"]
    assert set(summary.failed) == {"case002", "case003"} and "killed while writing" in summary.failed["case003"]
    assert sorted(p.name for p in out.iterdir()) == ["case001", SUMMARY_NAME, "prototypes.json"]  # nothing half-done
    assert json.loads((out / SUMMARY_NAME).read_text())["failed"] == summary.failed
    report = json.loads((out / "case001" / "report.json").read_text())
    assert 0.0 <= report["evidence_mass_in_tumour"] <= 1.0
    assert summary.evidence_mass_in_tumour["case001"] == report["evidence_mass_in_tumour"]
    assert report["prototypes"][0]["sharedness"] is not None  # reference pass ran despite the unreadable case
    finished = _mtime(out / "case001" / "report.json")

    monkeypatch.undo()
    open(datalist[1]["image"][1], "wb").write(good_t1ce)
    again = export_evidence(net, datalist, transform, out, top_k=2, figures=False, progress=False)
    assert again.skipped == ["case001"] and again.written == ["case002", "case003"] and not again.failed
    assert _mtime(out / "case001" / "report.json") == finished  # skipped, not rewritten
    assert export_evidence(net, datalist, transform, out, figures=False, progress=False).skipped == [
        "case001",
        "case002",
        "case003",
    ]


def test_a_case_prepared_from_dicom_gets_a_seg_on_its_t1ce_series(tmp_path):
    item, series_uid, paths = write_dicom_case(tmp_path / "data", tmp_path / "dicom")
    out = tmp_path / "evidence"
    net, transform = tiny_network(), image_transform()
    summary = export_evidence(net, [item], transform, out, figures=False, progress=False, dicom_seg=case_seg_writer)
    assert summary.written == ["caseD"], summary.failed

    report = json.loads((out / "caseD" / "report.json").read_text())
    seg = pydicom.dcmread(out / "caseD" / report["files"]["dicom_seg"])
    assert seg.FrameOfReferenceUID == pydicom.dcmread(paths[0]).FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    datasets = read_series(paths)
    expected = series_label_volume(nib.load(out / "caseD" / "evidence_label.nii.gz"), datasets)
    import highdicom as hd

    pixels = hd.seg.segread(seg.filename).get_pixels_by_source_instance(
        source_sop_instance_uids=[ds.SOPInstanceUID for ds in datasets], segment_numbers=[1]
    )[..., 0]
    assert expected.any() and np.array_equal(pixels, expected)


def test_command_line_exports_a_bundle_checkpoint(tmp_path, capsys):
    dataset = generate_cohort(tmp_path / "cohort", n_cases=2, seed=0, spacing=12.0)
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    network_def = {"_target_": "monai_protoshare.networks.build_network", "name": "@model_name",
                   **{k: list(v) if isinstance(v, tuple) else v for k, v in TINY_NET.items()}}  # fmt: skip
    settings = {"model_name": "um_protoshare", "spatial_size": list(NETWORK_GRID), "pixdim": PIXDIM,
                "network_def": network_def, "dataset_dir": str(dataset)}  # fmt: skip
    (bundle / "configs" / "train.yaml").write_text(yaml.safe_dump(settings))
    checkpoint = tmp_path / "model.pt"
    torch.save(tiny_network().state_dict(), checkpoint)
    args = ["--bundle_root", str(bundle), "--checkpoint", str(checkpoint), "--output_dir", str(tmp_path / "out")]
    assert main([*args, "--no_sharedness", "--no_figures", "--top_k", "2"]) == 0
    assert "written 2, skipped (already done) 0, failed 0" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "BraTS20_Training_001" / "report.json").read_text())
    assert report["checkpoint"] == str(checkpoint) and len(report["files"]["prototype_maps"]) == 2
    capsys.readouterr()
    assert main([*args, "--subjects", "BraTS20_Training_003"]) == 2  # unknown subject: a usage error
    assert main([*args, "--preset", "nonexistent"]) == 2
    assert main([*args[:2], "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert [e.split(":")[1] for e in errors] == [" --subjects", " --bundle_root/--preset", " --checkpoint"]
    assert all(e.startswith("error: ") for e in errors)


def test_bundle_workflow_export_takes_one_held_out_case_per_grade_first(tmp_path):
    held_out = [write_case(tmp_path / "data", f"case00{i}", label=int(i < 3), seed=i) for i in range(1, 4)]
    assert [c["subject_id"] for c in cases_one_per_class_first(held_out, 3)] == ["case003", "case001", "case002"]
    values = {"split": (held_out[1:], held_out), "network": tiny_network(), "spatial_size": NETWORK_GRID,
              "pixdim": PIXDIM, "model_name": "um_protoshare", "dicom_seg": None}  # fmt: skip
    workflow = SimpleNamespace(parser=SimpleNamespace(get_parsed_content=values.__getitem__))
    dirs = export_for_workflow(workflow, tmp_path / "evidence", count=2, top_k=1, figures=False)
    assert dirs == [tmp_path / "evidence" / "case003", tmp_path / "evidence" / "case001"]
    assert all((d / "report.json").is_file() for d in dirs)
